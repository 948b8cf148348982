/**
 * The local cache service, driven by the real @actions/cache 6 in this process: if the service spoke the
 * protocol wrong, these round trips would fail. A "later run" reuses the same RUNNER_TEMP path with the old
 * contents moved away, as on GitHub (the cache version hashes the path strings).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import * as cache from '@actions/cache';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CacheService, laterRun } from '../support/cache-service.js';
import { cacheEnv, captureStdout, fillRandom, jobDirs, treeDigest } from '../support/cache-files.js';

const MiB = 1024 * 1024;

let service: CacheService;
let dirs: ReturnType<typeof jobDirs>;
const env = cacheEnv();

beforeAll(async () => {
  service = await CacheService.start();
  dirs = jobDirs('cache-svc');
});

afterEach(() => service.heal());

afterAll(async () => {
  env.restore();
  await service.stop();
  rmSync(dirs.base, { recursive: true, force: true });
});

/** A stable data dir under RUNNER_TEMP, filled by `fill`. */
async function dataDir(name: string, fill: (dir: string) => Promise<void> | void): Promise<string> {
  const dir = join(dirs.runnerTemp, `ici-${name}`);
  mkdirSync(dir, { recursive: true });
  await fill(dir);
  return dir;
}

const save = (paths: string[], key: string) => captureStdout(() => cache.saveCache(paths, key));
const restore = (paths: string[], key: string, restoreKeys: string[] = []) =>
  captureStdout(() => cache.restoreCache(paths, key, restoreKeys));

describe('cache service v2 (github.com protocol) with the real @actions/cache', () => {
  beforeAll(() => env.use(service.env({ workspace: dirs.workspace, runnerTemp: dirs.runnerTemp })));

  it('round-trips a small directory through a single blob PUT', async () => {
    const dir = await dataDir('small', (d) => writeFileSync(join(d, 'hello.txt'), 'hello cache\n'));
    const digest = treeDigest(dir);
    const before = { ...service.counters.requests };
    const { value: id } = await save([dir], 'small-key');
    expect(id).toBeGreaterThan(0);
    expect(service.counters.requests.BlobPut).toBe((before.BlobPut ?? 0) + 1);
    expect(service.counters.requests.BlobBlock ?? 0).toBe(before.BlobBlock ?? 0);

    await laterRun([dirs.runnerTemp]);
    const { value: key } = await restore([dir], 'small-key');
    expect(key).toBe('small-key');
    expect(treeDigest(dir)).toBe(digest);
  });

  it('round-trips a 140 MiB incompressible directory through staged blocks and a block list', async () => {
    const dir = await dataDir('big', (d) => fillRandom(d, 2, 70 * MiB));
    const digest = treeDigest(dir);
    const before = { ...service.counters.requests };
    const uploadedBefore = service.counters.bytesUploaded;
    const t0 = Date.now();
    const { value: id } = await save([dir], 'big-key');
    const saveMs = Date.now() - t0;
    expect(id).toBeGreaterThan(0);
    expect((service.counters.requests.BlobBlock ?? 0) - (before.BlobBlock ?? 0)).toBeGreaterThanOrEqual(3);
    expect((service.counters.requests.BlobBlockList ?? 0) - (before.BlobBlockList ?? 0)).toBe(1);
    expect(service.counters.bytesUploaded - uploadedBefore).toBeGreaterThan(140 * MiB);

    await laterRun([dirs.runnerTemp]);
    const downloadedBefore = service.counters.bytesDownloaded;
    const t1 = Date.now();
    const { value: key } = await restore([dir], 'big-key');
    const restoreMs = Date.now() - t1;
    expect(key).toBe('big-key');
    expect(service.counters.bytesDownloaded - downloadedBefore).toBeGreaterThan(140 * MiB);
    expect(treeDigest(dir)).toBe(digest);
    // Reported numbers, not assertions: timing depends on the machine.
    process.stderr.write(`cache-service 140 MiB: save ${saveMs} ms, restore ${restoreMs} ms\n`);
  });

  it('restores the newest prefix match of a restore key, but an exact key wins over newer entries', async () => {
    const dir = await dataDir('prefix', () => undefined);
    writeFileSync(join(dir, 'v.txt'), 'one');
    expect((await save([dir], 'deps-Linux-aaa')).value).toBeGreaterThan(0);
    writeFileSync(join(dir, 'v.txt'), 'two');
    expect((await save([dir], 'deps-Linux-bbb')).value).toBeGreaterThan(0);

    await laterRun([dirs.runnerTemp]);
    const { value: matched, lines } = await restore([dir], 'deps-Linux-ccc', ['deps-Linux-', 'deps-']);
    expect(matched).toBe('deps-Linux-bbb');
    expect(lines).toContain('Cache hit for restore-key: deps-Linux-bbb');

    await laterRun([dirs.runnerTemp]);
    expect((await restore([dir], 'deps-Linux-aaa', ['deps-'])).value).toBe('deps-Linux-aaa');
  });

  it('misses an unknown key, and a known key saved for other paths (version scoping)', async () => {
    const dir = await dataDir('scoped', (d) => writeFileSync(join(d, 'x'), 'x'));
    expect((await save([dir], 'scoped-key')).value).toBeGreaterThan(0);
    expect((await restore([dir], 'no-such-key', ['nothing-'])).value).toBeUndefined();
    const other = await dataDir('scoped-other', () => undefined);
    expect((await restore([other], 'scoped-key', ['scoped-'])).value).toBeUndefined();
  });

  it('lets the first writer of a key win while the second is told another job is creating it', async () => {
    const dir = await dataDir('race', (d) => fillRandom(d, 1, 4 * MiB));
    // One capture around both: stdout is process-wide, so two overlapping captures would steal each other's lines.
    const { value: ids, lines } = await captureStdout(() =>
      Promise.all([cache.saveCache([dir], 'race-key'), cache.saveCache([dir], 'race-key')]),
    );
    ids.sort((x, y) => x - y);
    expect(ids[0]).toBe(-1);
    expect(ids[1]).toBeGreaterThan(0);
    expect(lines.join('\n')).toMatch(/another job may be creating this cache/);
    expect(service.list().filter((e) => e.key === 'race-key')).toHaveLength(1);
  });

  it('reports a truncated download as a failed restore, not as a hit', async () => {
    const dir = await dataDir('trunc', (d) => fillRandom(d, 1, 2 * MiB));
    expect((await save([dir], 'trunc-key')).value).toBeGreaterThan(0);
    await laterRun([dirs.runnerTemp]);
    service.truncateDownloads();
    const { value, lines } = await restore([dir], 'trunc-key');
    expect(value).toBeUndefined();
    expect(lines.some((l) => l.startsWith('::warning::Failed to restore'))).toBe(true);
  });

  it('refuses requests without the runtime token', async () => {
    const dir = await dataDir('token', (d) => writeFileSync(join(d, 'x'), 'x'));
    process.env.ACTIONS_RUNTIME_TOKEN = 'wrong';
    try {
      const { value, lines } = await save([dir], 'token-key');
      expect(value).toBe(-1);
      expect(lines.join('\n')).toMatch(/401/);
    } finally {
      process.env.ACTIONS_RUNTIME_TOKEN = service.token;
    }
  });
});

describe('cache service v1 (GHES protocol) with the real @actions/cache', () => {
  beforeAll(() => env.use(service.envV1({ workspace: dirs.workspace, runnerTemp: dirs.runnerTemp })));

  it('round-trips a directory through reserve, chunked PATCH and commit', async () => {
    const dir = await dataDir('ghes', (d) => fillRandom(d, 1, 3 * MiB));
    writeFileSync(join(dir, 'note.txt'), 'ghes');
    const digest = treeDigest(dir);
    const { value: id } = await save([dir], 'ghes-key');
    expect(id).toBeGreaterThan(0);
    expect(service.counters.requests.V1Reserve).toBeGreaterThanOrEqual(1);
    expect(service.counters.requests.V1Upload).toBeGreaterThanOrEqual(1);
    expect(service.counters.requests.V1Commit).toBeGreaterThanOrEqual(1);

    await laterRun([dirs.runnerTemp]);
    const { value: key } = await restore([dir], 'ghes-key-newer', ['ghes-']);
    expect(key).toBe('ghes-key');
    expect(service.counters.requests.V1Lookup).toBeGreaterThanOrEqual(1);
    expect(treeDigest(dir)).toBe(digest);
  });

  it('answers a second reservation of the same key with a conflict', async () => {
    const dir = await dataDir('ghes-dup', (d) => writeFileSync(join(d, 'x'), 'x'));
    expect((await save([dir], 'ghes-dup')).value).toBeGreaterThan(0);
    const { value, lines } = await save([dir], 'ghes-dup');
    expect(value).toBe(-1);
    expect(lines.join('\n')).toMatch(/another job may be creating this cache.*already exists/);
  });
});
