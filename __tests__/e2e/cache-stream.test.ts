/**
 * The streaming restore (core/cache-stream.ts) through the public cache API, in-process, against the local cache
 * service: entries are saved by the real @actions/cache, restored by the stream (ranged GETs into zstd | tar),
 * and every fault makes it resume, fall back to the library, or undo what it extracted.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import * as cache from '@actions/cache';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { restoreCache, saveCache } from '../../src/core/cache.js';
import { restoreCacheMounts } from '../../src/actions/remote-build-env/cache-mounts.js';
import { CacheService, laterRun } from '../support/cache-service.js';
import { cacheEnv, captureStdout, cliHost, fillRandom, jobDirs, treeDigest } from '../support/cache-files.js';

const MiB = 1024 * 1024;
const FALLBACK = /^Streaming restore not used \((.*)\); restoring through @actions\/cache\.$/;
const env = cacheEnv();
let service: CacheService;
let dirs: ReturnType<typeof jobDirs>;

/** A tree like a build cache: several multi-range random files, a small script, a nested dir. */
async function fillTree(dir: string, files = 3, bytesEach = 7 * MiB): Promise<string> {
  await fillRandom(dir, files, bytesEach);
  mkdirSync(join(dir, 'nested', 'deeper'), { recursive: true });
  writeFileSync(join(dir, 'nested', 'deeper', 'run.sh'), '#!/bin/sh\necho hi\n', { mode: 0o755 });
  return treeDigest(dir);
}

/** Saves with the unmodified library, as an earlier job (or actions/cache itself) would. */
async function saveWithLibrary(paths: string[], key: string): Promise<void> {
  const { value } = await captureStdout(() => cache.saveCache(paths, key));
  expect(value).toBeGreaterThan(0);
}

const fallbacks = (log: string[]) => log.filter((l) => FALLBACK.test(l));
const ranged = () => service.counters.rangedDownloads;
const plainDownloads = () => (service.counters.requests.Download ?? 0) - service.counters.rangedDownloads;

beforeAll(async () => {
  service = await CacheService.start();
  dirs = jobDirs('cache-stream');
});

afterEach(() => service.heal());

afterAll(async () => {
  env.restore();
  await service.stop();
  rmSync(dirs.base, { recursive: true, force: true });
});

describe('streaming restore, cache service v2', () => {
  beforeAll(() => env.use(service.env({ workspace: dirs.workspace, runnerTemp: dirs.runnerTemp })));

  it('restores an entry saved by the real @actions/cache byte-identically, through ranged GETs, with file digests', async () => {
    const dir = join(dirs.runnerTemp, 'ici-tree');
    const digest = await fillTree(dir);
    const fileSha = createHash('sha256')
      .update(readFileSync(join(dir, 'blob-1.bin')))
      .digest('hex');
    await saveWithLibrary([dir], 'tree-key');

    await laterRun([dirs.runnerTemp]);
    const { host, log } = cliHost();
    const before = { ranged: ranged(), plain: plainDownloads() };
    const result = await restoreCache(host, [dir], 'tree-key', [], { fileDigests: true });
    expect({ hit: result.hit, matchedKey: result.matchedKey }).toEqual({ hit: true, matchedKey: 'tree-key' });
    expect(treeDigest(dir)).toBe(digest);
    expect(result.fileDigests?.[join(dir, 'blob-1.bin')]).toBe(`sha256:${fileSha}`);
    expect(fallbacks(log)).toEqual([]);
    // 21 MiB of archive in 4 MiB ranges; the library's single plain GET was never made.
    expect(ranged() - before.ranged).toBeGreaterThanOrEqual(6);
    expect(plainDownloads()).toBe(before.plain);
    expect(log).toContain('Cache restored successfully');
    // No archive was written to RUNNER_TEMP on the way (the library leaves a uuid dir there).
    expect(readdirSync(dirs.runnerTemp)).toEqual(['ici-tree']);
  });

  it('finds a restore-key match and looks up without downloading', async () => {
    const dir = join(dirs.runnerTemp, 'ici-prefix');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'v'), 'one');
    await saveWithLibrary([dir], 'px-Linux-aaa');
    await laterRun([dirs.runnerTemp]);
    const { host, log } = cliHost();
    const downloads = service.counters.requests.Download ?? 0;
    expect(await restoreCache(host, [dir], 'px-Linux-bbb', ['px-Linux-'], { lookupOnly: true })).toEqual({
      hit: false,
      matchedKey: 'px-Linux-aaa',
      backend: 'actions',
    });
    expect(service.counters.requests.Download ?? 0).toBe(downloads);
    expect(await restoreCache(host, [dir], 'px-Linux-bbb', ['px-Linux-'])).toMatchObject({
      matchedKey: 'px-Linux-aaa',
    });
    expect(readFileSync(join(dir, 'v'), 'utf8')).toBe('one');
    expect(log).toContain('Cache hit for restore-key: px-Linux-aaa');
    expect(fallbacks(log)).toEqual([]);
  });

  it('resumes after connections are cut mid-range: the cut ranges are asked for again', async () => {
    const dir = join(dirs.runnerTemp, 'ici-cut');
    const digest = await fillTree(dir, 2, 6 * MiB);
    await saveWithLibrary([dir], 'cut-key');
    await laterRun([dirs.runnerTemp]);
    const { host, log } = cliHost();
    service.cutDownloads(3, 512 * 1024);
    expect((await restoreCache(host, [dir], 'cut-key')).hit).toBe(true);
    expect(treeDigest(dir)).toBe(digest);
    expect(log.filter((l) => l.startsWith('Retrying bytes '))).toHaveLength(3);
    expect(fallbacks(log)).toEqual([]);
  });

  it('falls back to the library, with one line, when the signed URL refuses ranges (4xx)', async () => {
    const dir = join(dirs.runnerTemp, 'ici-refused');
    const digest = await fillTree(dir, 1, 5 * MiB);
    await saveWithLibrary([dir], 'refused-key');
    await laterRun([dirs.runnerTemp]);
    const { host, log } = cliHost();
    service.refuseRanges(403);
    const plain = plainDownloads();
    expect((await restoreCache(host, [dir], 'refused-key')).hit).toBe(true);
    expect(treeDigest(dir)).toBe(digest);
    expect(fallbacks(log)).toEqual([
      'Streaming restore not used (the download URL answered HTTP 403); restoring through @actions/cache.',
    ]);
    expect(plainDownloads()).toBe(plain + 1);
  });

  it('undoes a half-done extraction when zstd | tar meet damaged bytes, then the library restores the entry', async () => {
    const dir = join(dirs.runnerTemp, 'ici-damaged');
    const digest = await fillTree(dir, 4, 5 * MiB);
    await saveWithLibrary([dir], 'damaged-key');
    await laterRun([dirs.runnerTemp]);
    const { host, log } = cliHost();
    service.damageRangesFrom(12 * MiB);
    expect((await restoreCache(host, [dir], 'damaged-key')).hit).toBe(true);
    expect(treeDigest(dir)).toBe(digest);
    expect(fallbacks(log)).toHaveLength(1);
    expect(fallbacks(log)[0]).toMatch(/\((zstd|tar) exited with \d: /);
  });

  it('leaves nothing half-extracted when the stream breaks and the library cannot restore either', async () => {
    const dir = join(dirs.runnerTemp, 'ici-undo');
    await fillTree(dir, 4, 5 * MiB);
    await saveWithLibrary([dir], 'undo-key');
    await laterRun([dirs.runnerTemp]);
    // The consumer's dir exists already and holds a file of its own: that must survive, nothing else appear.
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'mine.txt'), 'not from the cache');
    const { host, log } = cliHost();
    service.damageRangesFrom(12 * MiB);
    service.refusePlainDownloads(403);
    expect(await restoreCache(host, [dir], 'undo-key')).toEqual({ hit: false, backend: 'actions' });
    expect(fallbacks(log)).toHaveLength(1);
    expect(readdirSync(dir)).toEqual(['mine.txt']);

    // Without a dir of its own beforehand, not even the dir is left.
    rmSync(dir, { recursive: true });
    expect((await restoreCache(host, [dir], 'undo-key')).hit).toBe(false);
    expect(existsSync(dir)).toBe(false);
  });

  it('falls back when the service does not know GetCacheEntryDownloadURL (twirp 404)', async () => {
    const dir = join(dirs.runnerTemp, 'ici-unknown');
    const { host, log } = cliHost();
    service.fail(['GetCacheEntryDownloadURL'], 404);
    expect((await restoreCache(host, [dir], 'unknown-key')).hit).toBe(false);
    expect(fallbacks(log)).toEqual([
      'Streaming restore not used (GetCacheEntryDownloadURL answered HTTP 404); restoring through @actions/cache.',
    ]);
  });

  it('reports an outage of the lookup as an unavailable cache, without a second try through the library', async () => {
    const dir = join(dirs.runnerTemp, 'ici-outage');
    const { host, log } = cliHost();
    service.fail(['GetCacheEntryDownloadURL'], 503);
    const before = service.counters.requests.GetCacheEntryDownloadURL ?? 0;
    expect(await restoreCache(host, [dir], 'outage-key')).toEqual({ hit: false, backend: 'actions' });
    expect(log.some((l) => /^warning: Cache unavailable.*HTTP 503 \(after 3 attempts\)/.test(l))).toBe(true);
    expect((service.counters.requests.GetCacheEntryDownloadURL ?? 0) - before).toBe(3);
    expect(fallbacks(log)).toEqual([]);
  });

  it('gives up after IMAGE_CI_CACHE_TIMEOUT in the middle of a slow download and undoes it', async () => {
    const dir = join(dirs.runnerTemp, 'ici-slow');
    await fillTree(dir, 1, 8 * MiB);
    await saveWithLibrary([dir], 'slow-key');
    await laterRun([dirs.runnerTemp]);
    const { host, log } = cliHost();
    service.limitDownloads(2 * MiB);
    process.env.IMAGE_CI_CACHE_TIMEOUT = '2s';
    try {
      expect(await restoreCache(host, [dir], 'slow-key')).toEqual({ hit: false, backend: 'actions' });
    } finally {
      delete process.env.IMAGE_CI_CACHE_TIMEOUT;
      service.limitDownloads(undefined);
    }
    expect(log.some((l) => /^warning: Cache unavailable.*timed out after 2\.0 s/.test(l))).toBe(true);
    expect(existsSync(dir)).toBe(false);
  });

  it("restores remote-build-env's cache mounts through the stream", async () => {
    // Saved from the stage dir; restored through it into the service's cache-mount dir (names do not matter here).
    const stage = join(dirs.runnerTemp, 'ici-rbe');
    const mounts = join(stage, 'buildah-cache');
    const digest = await fillTree(mounts, 1, 6 * MiB);
    await saveWithLibrary([mounts], 'rbe-mounts-Linux-X64-0123456789abcdef');
    await laterRun([dirs.runnerTemp]);
    const live = join(dirs.runnerTemp, 'ici-svc', 'buildah-cache');
    mkdirSync(dirname(live));
    const { host, log } = cliHost();
    const before = ranged();
    const state = await restoreCacheMounts(host, { stage, live }, 'rbe-mounts', []);
    expect(state.matchedKey).toBe('rbe-mounts-Linux-X64-0123456789abcdef');
    expect(treeDigest(live)).toBe(digest);
    expect(ranged()).toBeGreaterThan(before);
    expect(fallbacks(log)).toEqual([]);
  });
});

describe('streaming restore, cache service v1 (GHES)', () => {
  beforeAll(() => env.use(service.envV1({ workspace: dirs.workspace, runnerTemp: dirs.runnerTemp })));

  it('leaves v1 to the library, which still restores (one line says so)', async () => {
    const dir = join(dirs.runnerTemp, 'ici-v1');
    const digest = await fillTree(dir, 1, 2 * MiB);
    const { host, log } = cliHost();
    expect((await saveCache(host, [dir], 'v1-key')).outcome).toBe('saved');
    await laterRun([dirs.runnerTemp]);
    const before = ranged();
    expect((await restoreCache(host, [dir], 'v1-key')).hit).toBe(true);
    expect(treeDigest(dir)).toBe(digest);
    expect(ranged()).toBe(before);
    expect(fallbacks(log)).toEqual([
      'Streaming restore not used (cache service v1 (GHES or no ACTIONS_CACHE_SERVICE_V2)); restoring through @actions/cache.',
    ]);
  });
});
