/**
 * A job killed at any point of a directory-cache restore, save or eviction (SIGKILL from inside the process,
 * right after its N-th filesystem change: support/kill-at-change.ts), then the next job on the same volume: it
 * finds every entry whole or not at all, is never blocked by what the killed job held, its restore leaves no temp
 * of the killed restore beside the files, and its save leaves no leftover of the killed job in the volume (space
 * the size budget would not count).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { restoreCache, saveCache } from '../../src/core/cache.js';
import { cacheEnv, cliHost, fillRandom, jobDirs } from '../support/cache-files.js';
import { REPO_ROOT } from '../support/harness.js';
import { countChanges, crashPoints, killAtChange } from '../support/kill-at-change.js';

const MiB = 1024 * 1024;
const JOB = join(REPO_ROOT, '__tests__/support/cache-dir-job.mjs');
const env = cacheEnv();
let dirs: ReturnType<typeof jobDirs>;
const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');

/** A machine disk in `dir` as the job caches it; returns its two paths. */
async function disk(dir: string): Promise<string[]> {
  mkdirSync(dir, { recursive: true });
  await fillRandom(dir, 1, MiB);
  const paths = [join(dir, 'disk.qcow2.zst'), join(dir, 'disk.json')];
  execFileSync('mv', [join(dir, 'blob-0.bin'), paths[0]!]);
  writeFileSync(paths[1]!, `{"dir":"${dir}"}\n`);
  return paths;
}

beforeAll(() => {
  for (const src of ['cache.ts', 'cache-dir.ts', 'cache-dir-extract.ts', 'cache-undo.ts', 'atomic.ts']) {
    const built = join(REPO_ROOT, 'lib/core', src.replace(/\.ts$/, '.js'));
    if (!existsSync(built) || statSync(built).mtimeMs < statSync(join(REPO_ROOT, 'src/core', src)).mtimeMs) {
      throw new Error(
        'lib/ is missing or older than src/core: run `npx tsc -p tsconfig.json` (or npm run build)',
      );
    }
  }
  dirs = jobDirs('cache-dir-kill');
});

afterAll(() => {
  env.restore();
  rmSync(dirs.base, { recursive: true, force: true });
});

describe('directory cache backend, a job killed at every point', () => {
  it('restore + save + eviction SIGKILLed after each filesystem change: the next job finds entries whole or absent, and nothing left', async () => {
    const template = join(dirs.base, 'template');
    const a = await disk(join(dirs.base, 'a'));
    const b = await disk(join(dirs.base, 'b'));
    const c = await disk(join(dirs.base, 'c'));
    const digests = new Map([...a, ...b, ...c].map((p) => [p, sha(p)]));
    env.use({ IMAGE_CI_CACHE_DIR: template });
    for (const [paths, key] of [
      [a, 'sweep-a'],
      [c, 'sweep-c'],
    ] as const) {
      expect((await saveCache(cliHost().host, [...paths], key)).outcome).toBe('saved');
    }
    // c was restored long ago: the job's save of b (over the budget) evicts it.
    const old = new Date(Date.now() - 3_600_000);
    for (const version of readdirSync(join(template, 'entries'))) {
      for (const entry of readdirSync(join(template, 'entries', version))) {
        const meta = JSON.parse(
          readFileSync(join(template, 'entries', version, entry, 'entry.json'), 'utf8'),
        );
        if (meta.key === 'sweep-c') utimesSync(join(template, 'entries', version, entry, 'used'), old, old);
      }
    }

    const volume = join(dirs.base, 'volume');
    const jobEnv = { ...process.env, IMAGE_CI_CACHE_DIR: volume, IMAGE_CI_CACHE_DIR_MAX_SIZE: '2.5MiB' };
    const fresh = () => {
      rmSync(volume, { recursive: true, force: true });
      execFileSync('cp', ['-a', template, volume]);
      for (const p of a) rmSync(p, { force: true });
    };
    const args = [JOB, join(dirs.base, 'a'), join(dirs.base, 'b')];
    fresh();
    const total = await countChanges(args, jobEnv);
    expect(total).toBeGreaterThan(20);

    const problems: string[] = [];
    env.use({ IMAGE_CI_CACHE_DIR: volume });
    for (const point of crashPoints(total, 40, 2)) {
      fresh();
      const killed = await killAtChange(point, args, jobEnv);
      if (!killed) continue;
      // The next job: every entry there restores whole (no lock of the killed job blocks it).
      for (const [paths, key] of [
        [a, 'sweep-a'],
        [b, 'sweep-b'],
        [c, 'sweep-c'],
      ] as const) {
        const present = readdirSync(join(volume, 'entries')).some((v) =>
          existsSync(join(volume, 'entries', v, createHash('sha256').update(key).digest('hex'))),
        );
        const backup = paths.map((p) => `${p}.orig`);
        paths.forEach((p, i) => existsSync(p) && execFileSync('mv', [p, backup[i]!]));
        const { host, log } = cliHost();
        const r = await restoreCache(host, [...paths], key);
        if (present && !r.hit)
          problems.push(`#${point}: ${key} present but not restored: ${log.join(' | ')}`);
        for (const p of r.hit ? paths : []) {
          if (sha(p) !== digests.get(p)) problems.push(`#${point}: ${key} restored ${p} differently`);
        }
        paths.forEach((p, i) => existsSync(backup[i]!) && execFileSync('mv', ['-f', backup[i]!, p]));
      }
      // Its restore of the killed job's files removed the temps the killed restore left beside them.
      const beside = readdirSync(join(dirs.base, 'a')).filter((name) => name.includes('.ici-'));
      if (beside.length) problems.push(`#${point}: left beside the restored files: ${beside.join(', ')}`);
      // Its save sweeps up what the killed job left in the volume.
      const d = await disk(join(dirs.base, `d-${point}`));
      expect((await saveCache(cliHost().host, d, `sweep-d-${point}`)).outcome).toBe('saved');
      const left = readdirSync(join(volume, 'tmp'));
      if (left.length) problems.push(`#${point}: left in tmp: ${left.join(', ')}`);
      rmSync(join(dirs.base, `d-${point}`), { recursive: true, force: true });
    }
    expect(problems).toEqual([]);
  });
});
