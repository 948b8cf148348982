/**
 * src/core/cache.ts in-process with the CLI's host against the local cache service and the real @actions/cache:
 * typed outcomes the harness tests do not reach (too-large, a hung service, lookup-only), and that in CLI mode
 * nothing the library logs leaks onto stdout (which carries only outputs).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { restoreCache, saveCache } from '../../src/core/cache.js';
import { CacheService, laterRun } from '../support/cache-service.js';
import { cacheEnv, captureStdout, cliHost, fillRandom, jobDirs, treeDigest } from '../support/cache-files.js';

const env = cacheEnv();
let service: CacheService;
let dirs: ReturnType<typeof jobDirs>;

/** Resolves once `condition` holds; fails the test with `what` if it never does. */
async function eventually(condition: () => boolean, what: string): Promise<void> {
  for (const deadline = Date.now() + 30_000; !condition();) {
    if (Date.now() > deadline) throw new Error(`never happened: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function data(name: string, text: string): string {
  const dir = join(dirs.runnerTemp, `ici-${name}`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'data.txt'), text);
  return dir;
}

beforeAll(async () => {
  service = await CacheService.start();
  dirs = jobDirs('cache-wrap');
});

afterEach(() => {
  service.heal();
  service.maxEntryBytes = Number.POSITIVE_INFINITY;
});

afterAll(async () => {
  env.restore();
  await service.stop();
  rmSync(dirs.base, { recursive: true, force: true });
});

describe('core/cache on the Actions cache backend, CLI host', () => {
  beforeAll(() => env.use(service.env({ workspace: dirs.workspace, runnerTemp: dirs.runnerTemp })));

  it('keeps stdout clean: library progress and debug go to the host log, not to stdout', async () => {
    const dir = join(dirs.runnerTemp, 'ici-quiet');
    await fillRandom(dir, 1, 1024 * 1024);
    const digest = treeDigest(dir);
    const { host, log } = cliHost();
    const { value, lines } = await captureStdout(async () => {
      const save = await saveCache(host, [dir], 'quiet-key');
      await laterRun([dirs.runnerTemp]);
      return { save, restore: await restoreCache(host, [dir], 'quiet-key') };
    });
    expect(lines).toEqual([]);
    expect(value.save.outcome).toBe('saved');
    expect(value.restore).toEqual({ hit: true, matchedKey: 'quiet-key', backend: 'actions' });
    expect(treeDigest(dir)).toBe(digest);
    expect(log).toContain('Cache restored successfully');
  });

  it('looks up without downloading', async () => {
    const dir = data('lookup', 'x');
    const { host } = cliHost();
    expect((await saveCache(host, [dir], 'lookup-key')).outcome).toBe('saved');
    const downloads = service.counters.requests.Download ?? 0;
    expect(await restoreCache(host, [dir], 'lookup-key', [], { lookupOnly: true })).toEqual({
      hit: true,
      matchedKey: 'lookup-key',
      backend: 'actions',
    });
    expect(service.counters.requests.Download ?? 0).toBe(downloads);
  });

  it('reports an entry over the size limit as too-large (v2: refused at finalize)', async () => {
    service.maxEntryBytes = 10;
    const { host, log } = cliHost();
    const result = await saveCache(host, [data('big-v2', 'more than ten bytes')], 'big-v2');
    expect(result.outcome).toBe('too-large');
    expect(log.some((l) => l.startsWith('warning: Cache entry big-v2 too large, not saved'))).toBe(true);
  });

  it('reports a truncated download as unavailable cache and a miss', async () => {
    const dir = data('trunc', 'y'.repeat(100_000));
    const { host, log } = cliHost();
    expect((await saveCache(host, [dir], 'trunc-key')).outcome).toBe('saved');
    service.truncateDownloads();
    expect(await restoreCache(host, [dir], 'trunc-key')).toEqual({ hit: false, backend: 'actions' });
    expect(log.some((l) => l.startsWith('warning: Cache unavailable, continuing without it'))).toBe(true);
  });
});

describe('core/cache on the Actions cache backend, v1 (GHES)', () => {
  beforeAll(() => env.use(service.envV1({ workspace: dirs.workspace, runnerTemp: dirs.runnerTemp })));

  // A restore the stream leaves to the library (a lookup answer it does not know: v1's 203), whose download then
  // hangs: a library call abandoned at its deadline keeps running, and must stay quiet when it fails later.
  it('stops waiting for a hung service after IMAGE_CI_CACHE_TIMEOUT and carries on; the abandoned call stays quiet', async () => {
    const dir = data('hung', 'z');
    const { host, log } = cliHost(true);
    expect((await saveCache(host, [dir], 'hung-key')).outcome).toBe('saved');
    service.answerV1HitsWith(203);
    service.hang(['Download']);
    process.env.IMAGE_CI_CACHE_TIMEOUT = '1s';
    // stdout as the CLI's caller sees it, for the whole life of the abandoned call.
    const { value, lines } = await captureStdout(async () => {
      let restored;
      try {
        restored = await restoreCache(host, [dir], 'hung-key');
      } finally {
        delete process.env.IMAGE_CI_CACHE_TIMEOUT;
      }
      // The abandoned call fails once the service drops it (and the retries the library makes on v1); the
      // library then complains (`::warning::Failed to restore: ... socket hang up`), which must reach the host
      // log as debug, never stdout.
      await eventually(() => {
        service.dropHung();
        return log.some((l) => l.startsWith('debug: @actions/cache warning: Failed to restore'));
      }, 'the abandoned call reported its failure to the host log');
      return restored;
    });
    expect(value).toEqual({ hit: false, backend: 'actions' });
    expect(log.some((l) => /^warning: Cache unavailable.*timed out after 1\.0 s/.test(l))).toBe(true);
    expect(lines).toEqual([]);
    service.heal();
    // The abandoned call does not block the next one.
    expect((await saveCache(host, [dir], 'hung-key-after')).outcome).toBe('saved');
  });

  it('reports an entry over the size limit as too-large (v1: refused at reserve)', async () => {
    service.maxEntryBytes = 10;
    const { host } = cliHost();
    expect((await saveCache(host, [data('big-v1', 'more than ten bytes')], 'big-v1')).outcome).toBe(
      'too-large',
    );
  });

  it('reports another writer of the key as exists, with the service reason', async () => {
    const dir = data('dup-v1', 'd');
    const { host } = cliHost();
    expect((await saveCache(host, [dir], 'dup-v1')).outcome).toBe('saved');
    const again = await saveCache(host, [dir], 'dup-v1');
    expect(again.outcome).toBe('exists');
    expect(again.message).toMatch(/already exists/);
  });
});
