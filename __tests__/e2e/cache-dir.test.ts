/**
 * The directory backend through the public cache API, in-process with real tar, zstd and the filesystem.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { restoreCache, saveCache } from '../../src/core/cache.js';
import { CliHost } from '../../src/core/host.js';
import { MapInputSource } from '../../src/core/inputs.js';
import { laterRun } from '../support/cache-service.js';
import { fillRandom, jobDirs, treeDigest } from '../support/cache-files.js';

const MiB = 1024 * 1024;
const ENV = ['ACTIONS_CACHE_SERVICE_V2', 'ACTIONS_RESULTS_URL', 'ACTIONS_CACHE_URL', 'IMAGE_CI_CACHE_DIR'];
const saved: Record<string, string | undefined> = {};
let dirs: ReturnType<typeof jobDirs>;
let volume: string;

function cliHost(): { host: CliHost; log: string[] } {
  const log: string[] = [];
  const host = new CliHost({ inputs: new MapInputSource({}), log: (l) => log.push(l), out: () => undefined });
  return { host, log };
}

function data(name: string): string {
  const dir = join(dirs.runnerTemp, `ici-${name}`);
  mkdirSync(dir, { recursive: true });
  return dir;
}

beforeAll(() => {
  for (const k of ENV) {
    saved[k] = process.env[k];
    delete process.env[k];
  }
  dirs = jobDirs('cache-dir');
  volume = join(dirs.base, 'volume');
  process.env.IMAGE_CI_CACHE_DIR = volume;
});

afterAll(() => {
  for (const k of ENV) {
    if (saved[k] === undefined) delete process.env[k];
    else process.env[k] = saved[k];
  }
  rmSync(dirs.base, { recursive: true, force: true });
});

describe('directory cache backend', () => {
  it('saves and restores a tree exactly; a lookup finds it without extracting', async () => {
    const dir = data('roundtrip');
    await fillRandom(dir, 2, 3 * MiB);
    mkdirSync(join(dir, 'sub'));
    writeFileSync(join(dir, 'sub', 'script.sh'), '#!/bin/sh\n', { mode: 0o755 });
    const digest = treeDigest(dir);
    const { host } = cliHost();
    expect((await saveCache(host, [dir], 'rt-1')).outcome).toBe('saved');

    await laterRun([dirs.runnerTemp]);
    expect(await restoreCache(host, [dir], 'rt-1', [], { lookupOnly: true })).toEqual({
      hit: true,
      matchedKey: 'rt-1',
      backend: 'dir',
    });
    expect(existsSync(join(dir, 'sub'))).toBe(false);
    expect(await restoreCache(host, [dir], 'rt-1')).toEqual({
      hit: true,
      matchedKey: 'rt-1',
      backend: 'dir',
    });
    expect(treeDigest(dir)).toBe(digest);
  });

  it('falls back to the newest prefix match and reports it as not a hit', async () => {
    const dir = data('prefix');
    const { host, log } = cliHost();
    writeFileSync(join(dir, 'v'), 'old');
    expect((await saveCache(host, [dir], 'px-Linux-1')).outcome).toBe('saved');
    writeFileSync(join(dir, 'v'), 'new');
    expect((await saveCache(host, [dir], 'px-Linux-2')).outcome).toBe('saved');
    await laterRun([dirs.runnerTemp]);
    const r = await restoreCache(host, [dir], 'px-Linux-3', ['px-Linux-']);
    expect(r).toEqual({ hit: false, matchedKey: 'px-Linux-2', backend: 'dir' });
    expect(log).toContain('Cache restored from restore key match: px-Linux-2');
  });

  it('scopes entries by the path strings: the same key for other paths is a miss', async () => {
    const dir = data('scope-a');
    writeFileSync(join(dir, 'x'), 'x');
    const { host } = cliHost();
    expect((await saveCache(host, [dir], 'scope-key')).outcome).toBe('saved');
    expect(await restoreCache(host, [data('scope-b')], 'scope-key', ['scope-'])).toEqual({
      hit: false,
      backend: 'dir',
    });
  });

  it('lets one of two concurrent writers of a key publish; the other reports exists and leaves nothing behind', async () => {
    const dir = data('race');
    await fillRandom(dir, 1, 8 * MiB);
    const { host, log } = cliHost();
    const results = await Promise.all([
      saveCache(host, [dir], 'race-key'),
      saveCache(host, [dir], 'race-key'),
    ]);
    expect(results.map((r) => r.outcome).sort()).toEqual(['exists', 'saved']);
    expect(log.some((l) => l.startsWith('Cache not saved, another job saved or is saving race-key'))).toBe(
      true,
    );
    expect(log.some((l) => l.startsWith('warning:'))).toBe(false);
    expect(readdirSync(join(volume, 'tmp'))).toEqual([]);
    expect((await saveCache(host, [dir], 'race-key')).outcome).toBe('exists');
  });

  it('ignores a half-written entry left by a crash and warns (miss) on a damaged archive', async () => {
    const dir = data('crash');
    writeFileSync(join(dir, 'x'), 'x');
    const { host, log } = cliHost();
    mkdirSync(join(volume, 'tmp', 'deadbeef'), { recursive: true });
    writeFileSync(join(volume, 'tmp', 'deadbeef', 'archive.tar.zst'), 'partial');
    const dayOld = join(volume, 'tmp', 'crashed-yesterday');
    mkdirSync(dayOld);
    const yesterday = new Date(Date.now() - 25 * 3_600_000);
    utimesSync(dayOld, yesterday, yesterday);
    expect((await restoreCache(host, [dir], 'crash-key')).hit).toBe(false);
    expect((await saveCache(host, [dir], 'crash-key')).outcome).toBe('saved');
    // The save swept the day-old leftover but not one that may belong to a writer still running.
    expect(readdirSync(join(volume, 'tmp'))).toEqual(['deadbeef']);

    const entryName = createHash('sha256').update('crash-key').digest('hex');
    const [version] = readdirSync(join(volume, 'entries')).filter((v) =>
      existsSync(join(volume, 'entries', v, entryName)),
    );
    writeFileSync(join(volume, 'entries', version!, entryName, 'archive.tar.zst'), 'not zstd');
    await laterRun([dirs.runnerTemp]);
    const r = await restoreCache(host, [dir], 'crash-key');
    expect(r).toEqual({ hit: false, backend: 'dir' });
    expect(
      log.some((l) => /^warning: Cache unavailable, continuing without it \(dir backend\)/.test(l)),
    ).toBe(true);
  });

  it('skips saving when none of the paths exist', async () => {
    const { host } = cliHost();
    expect((await saveCache(host, [join(dirs.base, 'missing')], 'none-key')).outcome).toBe('skipped');
  });
});
