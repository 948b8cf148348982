/**
 * The streaming restore (core/cache-stream.ts) in a process of its own that runs short of resources: too few file
 * descriptors (prlimit on itself), a zstd or tar that answered the probe but cannot be started or dies at once.
 * Whatever fails, the process must end by itself with the restore's answer (no tar waiting for input, no relay
 * socket keeping the event loop alive, no unhandled error), leave no tar or zstd running and no relay directory
 * in its TMPDIR, and leave the cache path either restored whole or absent.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import * as cache from '@actions/cache';
import { which } from '@actions/io';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CacheService, laterRun } from '../support/cache-service.js';
import { cacheEnv, captureStdout, fillRandom, jobDirs, treeDigest } from '../support/cache-files.js';
import { REPO_ROOT } from '../support/harness.js';

const MiB = 1024 * 1024;
/** Only detects a hang: each restore of this small entry takes about a second, even when it falls back. */
const LIVENESS_MS = 60_000;
const RESULT = 'ici-result ';
const FALLBACK = /^Streaming restore not used \((.*)\); restoring through @actions\/cache\.$/;
const env = cacheEnv();
let service: CacheService;
let dirs: ReturnType<typeof jobDirs>;
/** A saved cache entry: its one path, its key and the digest of the tree saved. */
interface Entry {
  dir: string;
  key: string;
  digest: string;
}
let entry: Entry;

/**
 * The restore as an action's main runs it, from the compiled product (lib/). With a limit, everything is loaded
 * first (the fallback's library too) and, when `probed`, the stream's tar and zstd probes are answered by a
 * lookup: the limit then bites the restore itself, from its first descriptor on, not module loading.
 */
const CHILD = `
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
const [lib, path, key, extra, probed] = process.argv.slice(1);
const { restoreCache } = await import(lib + '/core/cache.js');
const { CliHost } = await import(lib + '/core/host.js');
const { MapInputSource } = await import(lib + '/core/inputs.js');
await import('@actions/cache');
const log = [];
const host = new CliHost({ inputs: new MapInputSource({}), log: (l) => log.push(l), out: () => undefined });
if (probed) await restoreCache(host, [path], key, [], { lookupOnly: true });
if (extra) {
  const limit = readdirSync('/proc/self/fd').length - 1 + Number(extra);
  execFileSync('prlimit', ['--pid', String(process.pid), '--nofile=' + limit + ':' + limit]);
}
const result = await restoreCache(host, [path], key);
process.stdout.write('\\n${RESULT}' + JSON.stringify({ hit: result.hit, log }) + '\\n');
`;

/**
 * The cache version's zstd probe (core/cache-version.js) asked while every descriptor is taken, then again once
 * they are free: the first answer is the library's for a zstd it cannot start (gzip), the second must not be it.
 */
const PROBE_CHILD = `
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, readdirSync } from 'node:fs';
const { compressionMethod } = await import(process.argv[1] + '/core/cache-version.js');
const limit = readdirSync('/proc/self/fd').length + 16;
execFileSync('prlimit', ['--pid', String(process.pid), '--nofile=' + limit + ':' + limit]);
const held = [];
try {
  for (;;) held.push(openSync('/dev/null', 'r'));
} catch {}
const starved = await compressionMethod();
for (const fd of held) closeSync(fd);
const freed = await compressionMethod();
process.stdout.write(JSON.stringify({ held: held.length, starved, freed }));
`;

interface ChildRun {
  code: number | null;
  /** Killed by the liveness timer: it would not have ended by itself. */
  hung: boolean;
  result?: { hit: boolean; log: string[] };
  stderr: string;
  /** Every tar and zstd it started. */
  pids: number[];
  /** What it left in its TMPDIR. */
  tmpLeft: string[];
}

/**
 * A PATH dir with shims that record each tar's and zstd's pid, then run the real one (or `bodies[tool]`), and
 * prlimit and unzstd: nothing else, so a zstd or tar made unstartable here is not found further down PATH.
 */
async function shimDir(name: string, bodies: { tar?: string; zstd?: string } = {}): Promise<string> {
  const dir = join(dirs.base, name);
  mkdirSync(dir, { recursive: true });
  for (const tool of ['tar', 'zstd'] as const) {
    const body = bodies[tool] ?? 'exec "$REAL" "$@"';
    const script = `#!/bin/sh\nREAL=${await which(tool, true)}\necho $$ >> ${join(dir, 'pids')}\n${body}\n`;
    writeFileSync(join(dir, tool), script);
    chmodSync(join(dir, tool), 0o755);
  }
  // The library's tar runs `unzstd`.
  for (const tool of ['prlimit', 'unzstd']) {
    writeFileSync(join(dir, tool), `#!/bin/sh\nexec ${await which(tool, true)} "$@"\n`);
    chmodSync(join(dir, tool), 0o755);
  }
  return dir;
}

/** A later run's restore in a child process; `extra` = N lets it open only N more descriptors than it holds. */
async function restoreInChild(shims: string, extra = '', probed = '', target = entry): Promise<ChildRun> {
  await laterRun([dirs.runnerTemp]);
  const tmp = join(dirs.base, 'child-tmp');
  mkdirSync(tmp, { recursive: true });
  const pidFile = join(shims, 'pids');
  rmSync(pidFile, { force: true });
  // From the repository, so that the script's bare import finds node_modules.
  const child = spawn(
    process.execPath,
    ['--input-type=module', '-e', CHILD, join(REPO_ROOT, 'lib'), target.dir, target.key, extra, probed],
    {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        ...service.env({ workspace: dirs.workspace, runnerTemp: dirs.runnerTemp }),
        NODE_OPTIONS: '',
        TMPDIR: tmp,
        PATH: shims,
      },
    },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString('utf8')).slice(-2000)));
  let hung = false;
  const liveness = setTimeout(() => {
    hung = true;
    child.kill('SIGKILL');
  }, LIVENESS_MS);
  const code = await new Promise<number | null>((done) => child.on('close', (c) => done(c)));
  clearTimeout(liveness);
  const line = stdout.split('\n').find((l) => l.startsWith(RESULT));
  const pids = existsSync(pidFile)
    ? readFileSync(pidFile, 'utf8').split('\n').filter(Boolean).map(Number)
    : [];
  const tmpLeft = readdirSync(tmp);
  rmSync(tmp, { recursive: true, force: true });
  return {
    code,
    hung,
    result: line ? (JSON.parse(line.slice(RESULT.length)) as ChildRun['result']) : undefined,
    stderr,
    pids,
    tmpLeft,
  };
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

const fallbackReason = (run: ChildRun) => run.result?.log.map((l) => FALLBACK.exec(l)?.[1]).find((r) => r);

/** What every run must hold, whatever failed: an answer, an exit by itself, nothing left, never half a tree. */
function expectClean(run: ChildRun, label: string, target = entry): void {
  // What the child said on stderr is shown only when it did not end well (an unhandled error's stack).
  const ended = { label, hung: run.hung, code: run.code, answered: run.result !== undefined };
  expect({ ...ended, stderr: run.code === 0 ? '' : run.stderr }).toEqual({
    label,
    hung: false,
    code: 0,
    answered: true,
    stderr: '',
  });
  expect({ label, running: run.pids.filter(alive), tmpLeft: run.tmpLeft }).toEqual({
    label,
    running: [],
    tmpLeft: [],
  });
  if (existsSync(target.dir)) {
    expect({ label, tree: treeDigest(target.dir) }).toEqual({ label, tree: target.digest });
  }
}

/**
 * Restores with 0, 1, 2, ... more descriptors allowed until one streams the whole entry: every step fails at the
 * next descriptor the restore (or its fallback) opens. Answers what each step did, for the failure message.
 */
async function sweep(name: string, probed: string): Promise<string[]> {
  const shims = await shimDir(name);
  const outcomes: string[] = [];
  for (let n = 0; n <= 40; n++) {
    const run = await restoreInChild(shims, String(n), probed);
    const reason = fallbackReason(run);
    outcomes.push(`${n}: ${run.result?.hit ? 'hit' : 'miss'}${reason ? ` after fallback: ${reason}` : ''}`);
    expectClean(run, `${name}, ${n} more descriptors`);
    if (run.result?.hit && !reason) return outcomes;
  }
  throw new Error(`never streamed:\n${outcomes.join('\n')}`);
}

async function saveWithLibrary(saved: Entry): Promise<void> {
  const { value } = await captureStdout(() => cache.saveCache([saved.dir], saved.key));
  expect(value).toBeGreaterThan(0);
}

beforeAll(async () => {
  service = await CacheService.start();
  dirs = jobDirs('cache-stream-resources');
  env.use(service.env({ workspace: dirs.workspace, runnerTemp: dirs.runnerTemp }));
  const dir = join(dirs.runnerTemp, 'ici-res');
  // 9 ranges of 4 MiB: the stream opens its 8 connections while zstd and tar run.
  await fillRandom(dir, 3, 11 * MiB);
  entry = { dir, key: 'resources-key', digest: treeDigest(dir) };
  await saveWithLibrary(entry);
});

afterAll(async () => {
  env.restore();
  await service.stop();
  rmSync(dirs.base, { recursive: true, force: true });
});

describe('streaming restore short of resources, in a process of its own', () => {
  it('streams the whole entry with the shims and no limit (what the attacks below start from)', async () => {
    const run = await restoreInChild(await shimDir('plain'));
    expectClean(run, 'no limit');
    expect({ hit: run.result?.hit, fallback: fallbackReason(run) }).toEqual({
      hit: true,
      fallback: undefined,
    });
    expect(treeDigest(entry.dir)).toBe(entry.digest);
    // tar and zstd were both started (the shims saw them), and are gone.
    expect(run.pids.length).toBeGreaterThanOrEqual(2);
  });

  it('ends by itself with an answer, nothing running or left, at every descriptor limit (probes included)', async () => {
    const outcomes = await sweep('sweep-cold', '');
    // The tightest limits fail where the restore starts: the zstd and tar probes, run through core/exec.
    expect(outcomes[0]).toMatch(/^0: miss/);
  });

  it('ends by itself with an answer, nothing running or left, at every descriptor limit (probes answered before)', async () => {
    const outcomes = await sweep('sweep-probed', 'probed');
    expect(outcomes[0]).toMatch(/^0: miss/);
  });

  it('a zstd probe that failed for lack of descriptors is asked again once they are free, not remembered', () => {
    const out = execFileSync(
      process.execPath,
      ['--input-type=module', '-e', PROBE_CHILD, join(REPO_ROOT, 'lib')],
      { cwd: REPO_ROOT, encoding: 'utf8', timeout: LIVENESS_MS, env: { ...process.env, NODE_OPTIONS: '' } },
    );
    expect(JSON.parse(out)).toEqual({
      held: expect.any(Number),
      starved: 'gzip',
      freed: 'zstd-without-long',
    });
  });

  /** Shim bodies: each answers the probe (`--version`) like the real tool, then breaks as named. */
  const afterProbe = (breakIt: string) =>
    `if [ "$1" = --version ] || [ "$2" = --version ]; then "$REAL" "$@"; rc=$?; ${breakIt}; exit $rc; fi\nexec "$REAL" "$@"`;

  it.each([
    [
      'zstd loses its execute permission',
      'zstd',
      afterProbe('/bin/chmod 000 "$0"'),
      /^zstd could not be started: spawn zstd EACCES$/,
    ],
    [
      'zstd becomes a directory',
      'zstd',
      afterProbe('/bin/rm "$0"; /bin/mkdir "$0"'),
      /^zstd could not be started: spawn zstd EACCES$/,
    ],
    [
      'tar loses its execute permission',
      'tar',
      afterProbe('/bin/chmod 000 "$0"'),
      /^tar could not be started: spawn \S+ EACCES$/,
    ],
    [
      'zstd exits with an error before reading',
      'zstd',
      '[ "$1" = -d ] && { echo "zstd: out of memory" >&2; exit 1; }\nexec "$REAL" "$@"',
      /^zstd exited with 1: zstd: out of memory/,
    ],
    [
      'zstd exits with success before reading',
      'zstd',
      '[ "$1" = -d ] && exit 0\nexec "$REAL" "$@"',
      /^tar exited with 2: .*This does not look like a tar archive/,
    ],
  ])('ends by itself with nothing left when %s after the probe', async (_, tool, body, reason) => {
    const name = `broken-${tool}-${Math.random().toString(36).slice(2, 8)}`;
    const run = await restoreInChild(await shimDir(name, { [tool]: body }));
    expectClean(run, name);
    expect(fallbackReason(run)).toMatch(reason);
  });

  it('ends by itself with the path whole or absent when the disk fills up during the extraction', async () => {
    // A small filesystem of its own (tmpfs, root only): the entry is saved while it has room, restored once
    // it has not. Zeros compress to almost nothing: the stream believes the archive fits and tar runs out of
    // space on the way; so does the library's tar after it.
    const mount = join(dirs.base, 'small-fs');
    mkdirSync(mount, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=48m', 'tmpfs', mount]);
    try {
      const dir = join(mount, 'ici-full');
      mkdirSync(dir);
      writeFileSync(join(dir, 'a-random.bin'), randomBytes(2 * MiB));
      writeFileSync(join(dir, 'b-zeros.bin'), Buffer.alloc(30 * MiB));
      const full: Entry = { dir, key: 'disk-full-key', digest: treeDigest(dir) };
      await saveWithLibrary(full);
      rmSync(dir, { recursive: true });
      execFileSync('mount', ['-o', 'remount,size=8m', mount]);
      const run = await restoreInChild(await shimDir('disk-full'), '', '', full);
      expectClean(run, 'disk full', full);
      expect(fallbackReason(run)).toMatch(/No space left on device/);
      expect(existsSync(dir)).toBe(false);
    } finally {
      execFileSync('umount', [mount]);
    }
  });
});
