/**
 * The cache layer as an action uses it, in child processes started by the runner harness: a fixture action
 * (support/cache-fixture) restores in main and saves in post through the compiled src/core/cache.ts, with the
 * real @actions/cache talking HTTP to the local cache service (or the directory backend).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { existsSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import {
  REPO_ROOT,
  runAction,
  runnerTempLeftovers,
  secretOnlyAfterMask,
  type RunResult,
} from '../support/harness.js';
import { CacheService, laterRun } from '../support/cache-service.js';
import { jobDirs } from '../support/cache-files.js';

const fixture = join(REPO_ROOT, '__tests__/support/cache-fixture');
const compiled = join(REPO_ROOT, 'lib/core/cache.js');

let service: CacheService;
/** A second service that answers every call with 500, for the outage test. */
let downService: CacheService;
let outageRun: Promise<RunResult>;
const cleanup: string[] = [];

beforeAll(async () => {
  // The fixture imports the tsc output; a stale lib/ would test old code.
  for (const src of ['cache.ts', 'cache-actions.ts', 'cache-dir.ts']) {
    const source = join(REPO_ROOT, 'src/core', src);
    if (
      !existsSync(compiled) ||
      statSync(join(REPO_ROOT, 'lib/core', src.replace(/\.ts$/, '.js'))).mtimeMs < statSync(source).mtimeMs
    ) {
      throw new Error(
        'lib/ is missing or older than src/core/cache*.ts: run `npx tsc -p tsconfig.json` (or npm run build)',
      );
    }
  }
  service = await CacheService.start();
  downService = await CacheService.start();
  downService.fail('all', 500);
  // @actions/cache retries a 5xx for about 30 s per call (fixed backoff, not configurable), so the outage run
  // (a restore and a save) starts now, runs beside the other tests, and its test awaits it last.
  outageRun = runFixture(job('cache-outage'), { 'key-prefix': 'outage', content: 'x' }, downService.env());
  outageRun.catch(() => undefined);
});

afterAll(async () => {
  await service.stop();
  await downService.stop();
  for (const d of cleanup) rmSync(d, { recursive: true, force: true });
});

function job(label: string): ReturnType<typeof jobDirs> {
  const dirs = jobDirs(label);
  cleanup.push(dirs.base);
  return dirs;
}

/** The fixture's cache path: a stable `ici-<name>` dir, which stays in RUNNER_TEMP for the next job. */
const CACHE_PATH = 'ici-fixture-data';

function runFixture(
  dirs: ReturnType<typeof jobDirs>,
  inputs: Record<string, string>,
  env: Record<string, string | undefined>,
  keepInRunnerTemp: readonly string[] | 'unchecked' = [CACHE_PATH],
): Promise<RunResult> {
  return runAction({
    mainScript: join(fixture, 'main.mjs'),
    postScript: join(fixture, 'post.mjs'),
    actionYml: join(fixture, 'action.yml'),
    inputs,
    env,
    runnerTemp: dirs.runnerTemp,
    workspace: dirs.workspace,
    home: dirs.home,
    keepInRunnerTemp,
  });
}

const postLines = (r: RunResult) => (r.post?.lines ?? []).map((l) => l.text);

describe('core/cache through the runner harness, Actions cache service (v2)', () => {
  it('misses, saves in post, then hits the exact key in a later run and falls back to a restore key', async () => {
    const dirs = job('cache-act');
    const first = await runFixture(dirs, { 'key-prefix': 'roundtrip', content: 'first' }, service.env());
    expect(first.main.exitCode).toBe(0);
    expect(first.outputs['cache-hit']).toBe('false');
    expect(first.outputs['cache-matched-key']).toBe('');
    expect(first.post?.outputs['save-outcome']).toBe('saved');
    expect(first.post?.outputs['second-save']).toBe('no-op');
    expect(first.warnings).toEqual([]);

    await laterRun([dirs.runnerTemp, dirs.home]);
    const second = await runFixture(dirs, { 'key-prefix': 'roundtrip', content: 'first' }, service.env());
    expect(second.outputs['cache-hit']).toBe('true');
    expect(second.outputs['cache-matched-key']).toBe(first.outputs.key);
    expect(second.outputs['restored-content']).toBe('first');
    expect(second.post?.outputs['save-outcome']).toBe('none');
    // The download URL's SAS signature is masked before anything could print it.
    const sig = service.list().length > 0 ? second.masks.find((m) => /^[0-9a-f]{24}$/.test(m)) : undefined;
    expect(sig).toBeDefined();
    expect(secretOnlyAfterMask(second.main, sig!)).toBe(true);

    await laterRun([dirs.runnerTemp, dirs.home]);
    const third = await runFixture(dirs, { 'key-prefix': 'roundtrip', content: 'changed' }, service.env());
    expect(third.outputs['cache-hit']).toBe('false');
    expect(third.outputs['cache-matched-key']).toBe(first.outputs.key);
    expect(third.outputs['restored-content']).toBe('first');
    expect(third.post?.outputs['save-outcome']).toBe('saved');
    expect(
      service
        .list()
        .filter((e) => e.key.startsWith('roundtrip-'))
        .map((e) => e.key),
    ).toEqual([first.outputs.key, third.outputs.key]);
  });

  it('two jobs saving one key concurrently both succeed; one entry exists and the second says why it skipped', async () => {
    const dirs = job('cache-race');
    const inputs = { 'key-prefix': 'race', content: 'same', restore: 'false' };
    // One RUNNER_TEMP for both: checked once both are done (either may still be working at the other's end).
    const [a, b] = await Promise.all([
      runFixture(dirs, inputs, service.env(), 'unchecked'),
      runFixture(dirs, inputs, service.env(), 'unchecked'),
    ]);
    for (const r of [a, b]) {
      expect(runnerTempLeftovers(r, [CACHE_PATH])).toEqual([]);
      expect(r.main.exitCode).toBe(0);
      expect(r.post?.exitCode).toBe(0);
      expect(r.warnings).toEqual([]);
      expect(r.errors).toEqual([]);
    }
    const outcomes = [a, b].map((r) => r.post?.outputs['save-outcome']).sort();
    expect(outcomes).toEqual(['exists', 'saved']);
    const loser = a.post?.outputs['save-outcome'] === 'exists' ? a : b;
    expect(postLines(loser).join('\n')).toMatch(/Cache not saved, another job saved or is saving race-.*409/);
    expect(service.list().filter((e) => e.key === a.outputs.key)).toHaveLength(1);
  });
});

describe('core/cache through the runner harness, other backends', () => {
  it('uses the v1 (GHES) protocol when only ACTIONS_CACHE_URL is set', async () => {
    const dirs = job('cache-ghes');
    const first = await runFixture(dirs, { 'key-prefix': 'ghes', content: 'on ghes' }, service.envV1());
    expect(first.post?.outputs['save-outcome']).toBe('saved');
    await laterRun([dirs.runnerTemp, dirs.home]);
    const second = await runFixture(dirs, { 'key-prefix': 'ghes', content: 'on ghes' }, service.envV1());
    expect(second.outputs['cache-hit']).toBe('true');
    expect(second.outputs['restored-content']).toBe('on ghes');
  });

  it('uses the directory backend when IMAGE_CI_CACHE_DIR is set and no Actions cache service is present', async () => {
    const dirs = job('cache-dirbe');
    const env = { IMAGE_CI_CACHE_DIR: join(dirs.base, 'volume') };
    const first = await runFixture(dirs, { 'key-prefix': 'dirbe', content: 'on a volume' }, env);
    expect(first.post?.outputs['save-outcome']).toBe('saved');
    await laterRun([dirs.runnerTemp, dirs.home]);
    const second = await runFixture(dirs, { 'key-prefix': 'dirbe', content: 'on a volume' }, env);
    expect(second.outputs['cache-hit']).toBe('true');
    expect(second.outputs['restored-content']).toBe('on a volume');
    expect(second.warnings).toEqual([]);
  });

  it('with no backend at all the action still works and says the cache was not used', async () => {
    const dirs = job('cache-none');
    const r = await runFixture(dirs, { 'key-prefix': 'none', content: 'x' }, {});
    expect(r.main.exitCode).toBe(0);
    expect(r.outputs['cache-hit']).toBe('false');
    expect(r.post?.outputs['save-outcome']).toBe('skipped');
    expect(r.warnings).toEqual([]);
  });
});

describe('core/cache through the runner harness, cache outage', () => {
  it('every call answering 500 leaves both steps green with a warning that the cache was unavailable', async () => {
    const r = await outageRun;
    expect(r.main.exitCode).toBe(0);
    expect(r.post?.exitCode).toBe(0);
    expect(r.outputs['cache-hit']).toBe('false');
    expect(r.post?.outputs['save-outcome']).toBe('unavailable');
    expect(r.errors).toEqual([]);
    expect(r.main.warnings).toEqual([
      expect.stringMatching(/^Cache unavailable, continuing without it .*HTTP 500 \(after 3 attempts\)/),
    ]);
    expect(r.post?.warnings).toEqual([
      expect.stringMatching(/^Cache unavailable, outage-.* not saved: .*\(500\)/),
    ]);
    // The streaming restore's lookup tries 3 times and, an outage being an outage, does not hand over to the
    // library (which would try 5 more times); the save is the library's own 5 attempts.
    expect(downService.counters.requests.GetCacheEntryDownloadURL).toBe(3);
    expect(downService.counters.requests.CreateCacheEntry).toBe(5);
    expect(downService.list()).toEqual([]);
  });
});
