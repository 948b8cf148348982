/**
 * prune-simplestreams as shipped: dist/ through the runner harness and through the CLI, SIGKILLed right after
 * each change it makes in the repository, and run twice at once against the repository lock.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFileSync, spawn } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { acquireLock } from '../../src/core/atomic.js';
import { REPO_ROOT, runAction } from '../support/harness.js';
import { countChanges, crashPoints, killAtChange, signalAtChange } from '../support/kill-at-change.js';
import {
  ageEmptyLockTemps,
  listFiles,
  pruneOutcome,
  repoProblems,
  SimplestreamsRepo,
  snapshotTree,
  versionsOf,
  waitUnchangedFor,
} from '../support/simplestreams-fixture.js';
import { testUser, type User } from '../support/podman-matrix.js';

const HOUR = 3_600_000;
/**
 * A copy's orphans are new to a prune (their ctime) however old their mtimes: with this grace period and a short
 * wait they are old enough, while files a prune just dropped from images.json still wait for it.
 */
const GRACE = '500ms';
const GRACE_MS = 500;
const CLI = join(REPO_ROOT, 'dist/cli.js');
const LOCK = '.image-ci-prune.lock';
const DEBIAN_DIR = 'images/debian/bookworm/amd64/default';
const base = mkdtempSync(join(tmpdir(), 'ici-prune-e2e-'));
let counter = 0;
let pristine: string;
let small: string;

/** Nested dirs with sidecars, deltas, a VM, a broken version and orphans; `small` keeps the crash matrix short. */
function buildRepo(root: string, small = false): SimplestreamsRepo {
  const repo = new SimplestreamsRepo(root, 'nested');
  const versions = ['20240101_01:00', '20240201_01:00', '20240301_01:00', '20240401_01:00'].slice(
    small ? 1 : 0,
  );
  let previous: string | undefined;
  for (const v of versions) {
    repo.addVersion('debian:bookworm:default:amd64', v, { vm: !small, sidecars: true, deltaFrom: previous });
    previous = v;
  }
  repo.addVersion('alpine:3.19:default:amd64', '20240101_01:00', { sidecars: true });
  repo.addVersion('alpine:3.19:default:amd64', '20240201_01:00', { broken: true });
  repo.addOrphan(`${DEBIAN_DIR}/stale-upload.squashfs`, 3 * HOUR);
  repo.addOrphan(`${DEBIAN_DIR}/20231201_01:00/rootfs.squashfs`, 30 * 24 * HOUR);
  repo.write();
  return repo;
}

function freshCopy(from = pristine): string {
  const dir = join(base, `repo-${++counter}`);
  cpSync(from, dir, { recursive: true, preserveTimestamps: true });
  return dir;
}

interface Cli {
  pid: number;
  code: Promise<number>;
  /** The signal that ended the process, null when it exited. */
  signal: Promise<NodeJS.Signals | null>;
  stdout: string[];
  stderr: string[];
  waitFor(text: string): Promise<void>;
}

function cli(args: string[], env: Record<string, string> = {}, user?: User): Cli {
  const child = spawn(process.execPath, [CLI, 'prune-simplestreams', ...args], {
    env: { ...process.env, NODE_OPTIONS: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(user ? { uid: user.uid, gid: user.gid } : {}),
  });
  const stdout: string[] = [];
  const stderr: string[] = [];
  const waiters: Array<() => void> = [];
  const collect = (into: string[]) => (chunk: Buffer) => {
    into.push(...chunk.toString('utf8').split('\n').filter(Boolean));
    for (const w of waiters.splice(0)) w();
  };
  child.stdout.on('data', collect(stdout));
  child.stderr.on('data', collect(stderr));
  const code = new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? 1)));
  const signal = new Promise<NodeJS.Signals | null>((resolve) => child.on('close', (_c, s) => resolve(s)));
  const waitFor = async (text: string) => {
    while (!stderr.some((l) => l.includes(text))) {
      await new Promise<void>((resolve) => {
        waiters.push(resolve);
        void code.then(() => resolve());
      });
      if ((await Promise.race([code, Promise.resolve(-1)])) !== -1 && !stderr.some((l) => l.includes(text))) {
        throw new Error(`process ended without printing '${text}': ${stderr.join('\n')}`);
      }
    }
  };
  return { pid: child.pid!, code, signal, stdout, stderr, waitFor };
}

beforeAll(() => {
  if (!existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` before the e2e tests');
  pristine = join(base, 'pristine');
  buildRepo(pristine);
  small = join(base, 'small');
  buildRepo(small, true);
});
afterAll(() => rmSync(base, { recursive: true, force: true }));

describe('prune-simplestreams through the runner harness', () => {
  it('prunes, sets outputs, writes the report and a summary table per product', async () => {
    const root = freshCopy();
    const reportFile = join(base, `report-${counter}.json`);
    await waitUnchangedFor(root, GRACE_MS);
    const r = await runAction({
      action: 'prune-simplestreams',
      inputs: {
        path: root,
        'keep-versions': '2',
        'grace-period': GRACE,
        'report-file': reportFile,
        verify: 'sha256',
      },
    });
    expect(r.main.exitCode).toBe(0);
    expect(r.errors).toEqual([]);
    expect(r.post?.exitCode ?? 0).toBe(0);
    expect(r.outputs).toEqual({
      'removed-versions': '3',
      'removed-files': '2',
      'deferred-files': expect.any(String),
      'freed-bytes': expect.any(String),
      'report-file': reportFile,
    });
    const report = JSON.parse(readFileSync(reportFile, 'utf8'));
    expect(report.files.deleted.map((f: { path: string }) => f.path)).toEqual([
      `${DEBIAN_DIR}/20231201_01:00/rootfs.squashfs`,
      `${DEBIAN_DIR}/stale-upload.squashfs`,
    ]);
    expect(Number(r.outputs['deferred-files'])).toBe(report.files.deferred.length);
    expect(Number(r.outputs['freed-bytes'])).toBe(report.totals.freedBytes);
    // debian: 4 files of the newest (delta kept, its base stays) + 3 of the next; alpine: 2
    expect(report.verify).toEqual({ mode: 'sha256', checkedFiles: 9, problems: [] });
    expect(r.main.summary).toMatch(/\| Product \| Kept \| Dropped \| Broken \| Ignored \| Notes \|/);
    expect(r.main.summary).toMatch(/\| debian:bookworm:default:amd64 \| 2 \(newest 20240401_01:00\) \| 2 /);
    expect(r.main.summary).toMatch(/\| alpine:3.19:default:amd64 \| 1 .* \| 1 \(20240201_01:00\) \| 1 /);
    expect(versionsOf(root, 'debian:bookworm:default:amd64')).toEqual(['20240301_01:00', '20240401_01:00']);
    expect(repoProblems(root)).toEqual([]);
    expect(existsSync(join(root, `${DEBIAN_DIR}/20231201_01:00`))).toBe(false);
    expect(existsSync(join(root, LOCK))).toBe(false);
  });

  it('warns about a products pattern that matches nothing, in the log, the report and the summary', async () => {
    const root = freshCopy();
    const reportFile = join(base, `report-${counter}.json`);
    const r = await runAction({
      action: 'prune-simplestreams',
      inputs: { path: root, products: 'debain:*\nalpine:*', 'dry-run': 'true', 'report-file': reportFile },
    });
    expect(r.main.exitCode).toBe(0);
    expect(r.warnings).toEqual([
      "products: pattern 'debain:*' matches no product in images.json, so it selects nothing; " +
        'close product names: debian:bookworm:default:amd64',
    ]);
    expect(JSON.parse(readFileSync(reportFile, 'utf8')).unmatchedPatterns).toEqual([
      { pattern: 'debain:*', closest: ['debian:bookworm:default:amd64'] },
    ]);
    expect(r.main.summary).toContain('Warning: `products` pattern `debain:*` matches no product');
  });

  it('fails with exit 2 naming the input when keep-versions is below 1', async () => {
    const r = await runAction({
      action: 'prune-simplestreams',
      inputs: { path: base, 'keep-versions': '0' },
    });
    expect(r.main.exitCode).toBe(2);
    expect(r.errors).toEqual(["Input 'keep-versions': must be at least 1, got 0."]);
  });
});

describe('prune-simplestreams through the CLI', () => {
  it('--dry-run prints the plan and outputs and changes nothing', async () => {
    const root = freshCopy();
    const before = snapshotTree(root);
    await waitUnchangedFor(root, GRACE_MS);
    const run = cli(['--path', root, '--keep-versions', '2', '--grace-period', GRACE, '--dry-run']);
    expect(await run.code).toBe(0);
    expect(run.stdout).toContain('removed-versions=3');
    expect(run.stdout).toContain('removed-files=2');
    expect(run.stderr.join('\n')).toContain(`would delete ${DEBIAN_DIR}/stale-upload.squashfs`);
    expect(run.stderr.join('\n')).toMatch(/prune-simplestreams \(dry run\)/);
    expect(snapshotTree(root)).toEqual(before);
  });

  it('refuses a repository whose images.json points outside it, changing nothing', async () => {
    const root = freshCopy();
    const images = readFileSync(join(root, 'streams/v1/images.json'), 'utf8');
    writeFileSync(
      join(root, 'streams/v1/images.json'),
      images.replace(
        /"images\/alpine\/3.19\/amd64\/default\/20240101_01:00\/rootfs.squashfs"/,
        '"../../../etc/passwd"',
      ),
    );
    const before = snapshotTree(root);
    const run = cli(['--path', root, '--keep-versions', '1', '--grace-period', '0s']);
    expect(await run.code).toBe(1);
    expect(run.stderr.join('\n')).toMatch(/path '..\/..\/..\/etc\/passwd' leads out of the repository/);
    expect(snapshotTree(root)).toEqual(before);
  });
});

describe('a crafted repository: products named __proto__ and constructor', () => {
  it('prunes them exactly as the same repository with ordinary names, in images.json and index.json', async () => {
    const named = {
      'debian:bookworm:default:amd64': '__proto__',
      'alpine:3.19:default:amd64': 'constructor',
    };
    const rename = (text: string) =>
      Object.entries(named).reduce((t, [from, to]) => t.replaceAll(`"${from}"`, `"${to}"`), text);
    const plain = freshCopy(small);
    const crafted = freshCopy(small);
    for (const file of ['streams/v1/images.json', 'streams/v1/index.json']) {
      writeFileSync(join(crafted, file), rename(readFileSync(join(crafted, file), 'utf8')));
    }
    for (const root of [plain, crafted]) {
      expect(await cli(['--path', root, '--keep-versions', '1', '--grace-period', '0s']).code).toBe(0);
    }
    const images = (root: string) => readFileSync(join(root, 'streams/v1/images.json'), 'utf8');
    expect(images(plain)).toContain('"debian:bookworm:default:amd64"'); // the plain run kept both products
    expect(images(crafted)).toBe(rename(images(plain)));
    const indexProducts = (root: string) =>
      (
        JSON.parse(readFileSync(join(root, 'streams/v1/index.json'), 'utf8')) as {
          index: { images: { products: string[] } };
        }
      ).index.images.products;
    expect([...indexProducts(crafted)].sort()).toEqual(['__proto__', 'constructor']);
  });
});

describe('a crafted repository: a referenced rootfs is a symlink into private/', () => {
  /** The reported fixture: private/ also holds files no index names, a month old. */
  function crafted(): { root: string; link: string } {
    const root = join(base, `crafted-${++counter}`);
    const repo = new SimplestreamsRepo(root, 'nested');
    const old = repo.addVersion('debian:bookworm:default:amd64', '20240101_01:00');
    repo.addVersion('debian:bookworm:default:amd64', '20240201_01:00');
    repo.moveBehindSymlink(old.rootfs, 'private/rootfs.squashfs');
    repo.addOrphan('private/signing.key', 30 * 24 * HOUR);
    repo.addOrphan('private/README', 30 * 24 * HOUR);
    repo.write();
    return { root, link: old.rootfs };
  }
  const privateFiles = (root: string) =>
    [...snapshotTree(root)].filter(([path]) => path.startsWith('private/'));
  const deletedPaths = (reportFile: string) =>
    (
      JSON.parse(readFileSync(reportFile, 'utf8')) as { files: { deleted: { path: string }[] } }
    ).files.deleted.map((f) => f.path);

  it('through the runner harness, its month-old files past the grace period: nothing in private/ is deleted', async () => {
    const { root } = crafted();
    const before = privateFiles(root);
    const reportFile = join(base, `report-${counter}.json`);
    await waitUnchangedFor(root, GRACE_MS);
    const r = await runAction({
      action: 'prune-simplestreams',
      inputs: { path: root, 'grace-period': GRACE, 'report-file': reportFile },
    });
    expect(r.main.exitCode).toBe(0);
    expect(r.errors).toEqual([]);
    expect(deletedPaths(reportFile)).toEqual([]);
    expect(privateFiles(root)).toEqual(before);
    expect(repoProblems(root)).toEqual([]);
  });

  it('through the CLI: once its version is dropped the link is removed as a link, never its target', async () => {
    const { root, link } = crafted();
    const before = privateFiles(root);
    const args = ['--path', root, '--keep-versions', '1', '--grace-period', '0s'];
    const dryReport = join(base, `dry-${counter}.json`);
    expect(await cli([...args, '--dry-run', '--report-file', dryReport]).code).toBe(0);
    expect(deletedPaths(dryReport)).toContain(link);
    expect(deletedPaths(dryReport).filter((p) => !p.startsWith('images/'))).toEqual([]);

    const reportFile = join(base, `report-${counter}.json`);
    expect(await cli([...args, '--report-file', reportFile]).code).toBe(0);
    expect(deletedPaths(reportFile)).toEqual(deletedPaths(dryReport));
    expect(existsSync(join(root, link))).toBe(false);
    expect(privateFiles(root)).toEqual(before);
    expect(repoProblems(root)).toEqual([]);
  });
});

describe('prune-simplestreams verify failure', () => {
  it('exits 1 naming the file when verify sha256 finds a corrupted kept file, after writing outputs', async () => {
    const root = freshCopy();
    const file = join(root, 'images/alpine/3.19/amd64/default/20240101_01:00/rootfs.squashfs');
    writeFileSync(file, Buffer.alloc(readFileSync(file).length, 0x41));
    const run = cli(['--path', root, '--keep-versions', '2', '--verify', 'sha256']);
    expect(await run.code).toBe(1);
    expect(run.stdout).toContain('removed-versions=3');
    expect(run.stderr.join('\n')).toMatch(
      /verify \(sha256\) failed after pruning:\n {2}- images\/alpine\/3.19\/amd64\/default\/20240101_01:00\/rootfs.squashfs has sha256/,
    );
  });
});

describe('prune-simplestreams verify as an ordinary user', () => {
  it('lists a kept file it may not read as a verify problem and exits 1 after writing outputs', async () => {
    const user = testUser();
    const root = freshCopy();
    // The repository is the user's (its parent passable), but for one kept file only root may read.
    chmodSync(base, 0o755);
    execFileSync('chown', ['-R', `${user.uid}:${user.gid}`, root]);
    const unreadable = 'images/alpine/3.19/amd64/default/20240101_01:00/rootfs.squashfs';
    chownSync(join(root, unreadable), 0, 0);
    chmodSync(join(root, unreadable), 0o600);
    const run = cli(['--path', root, '--keep-versions', '2', '--verify', 'sha256'], {}, user);
    expect(await run.code).toBe(1);
    expect(run.stdout).toContain('removed-versions=3');
    expect(run.stderr.join('\n')).toContain(
      `verify (sha256) failed after pruning:\n  - ${unreadable} cannot be read: cannot read ${join(root, unreadable)}: EACCES`,
    );
  });
});

describe('crash safety (SIGKILL right after each change the prune makes in the repository)', () => {
  it('leaves a valid repository when killed at any step, and the next run converges', async () => {
    const args = (root: string) => ['--path', root, '--keep-versions', '1', '--grace-period', '0s'];
    const reference = freshCopy(small);
    const clean = cli(args(reference));
    expect(await clean.code).toBe(0);
    const expected = pruneOutcome(reference);
    expect(expected.files.length).toBeLessThan(listFiles(small).length);

    const brokenBefore = repoProblems(small);
    expect(brokenBefore).toHaveLength(1); // the fixture's broken alpine version
    let killedWithLock = 0;
    /** Kills a prune at its `event`-th change; returns false when the run made fewer (it then finished). */
    const crashAt = async (event: number): Promise<boolean> => {
      const root = freshCopy(small);
      const killed = await killAtChange(event, [CLI, 'prune-simplestreams', ...args(root)]);
      if (!killed) return false;
      // Valid for clients: whatever the metadata references is there, except what was missing before the prune.
      expect(repoProblems(root).filter((p) => !brokenBefore.includes(p))).toEqual([]);
      // A kill cannot release the lock: the next run must find it stale and take it over.
      if (existsSync(join(root, LOCK))) killedWithLock++;
      const next = cli(args(root));
      expect({ code: await next.code, log: next.stderr.join('\n') }).toMatchObject({ code: 0 });
      if (ageEmptyLockTemps(root) > 0) expect(await cli(args(root)).code).toBe(0);
      expect(pruneOutcome(root)).toEqual(expected);
      return true;
    };
    // Every crash point must kill the run (the kill comes from inside, at that very change).
    const points = crashPoints(await countChanges([CLI, 'prune-simplestreams', ...args(freshCopy(small))]));
    // lock, state, images.json, index.json, every deletion, state again, every emptied directory
    expect(points.length).toBeGreaterThan(10);
    // Spawning node dominates: four kills at a time keep the whole matrix short.
    for (let i = 0; i < points.length; i += 4) {
      const batch = points.slice(i, i + 4);
      expect(await Promise.all(batch.map(crashAt))).toEqual(batch.map(() => true));
    }
    expect(killedWithLock).toBeGreaterThan(0);
  }, 900_000);
});

describe('a cancelled run (the runner sends SIGINT, then SIGTERM)', () => {
  it('releases the lock as it ends by the signal, so a prune from another host need not wait 6 h', async () => {
    const args = (root: string) => ['--path', root, '--keep-versions', '1', '--grace-period', '0s'];
    const runs = (['SIGINT', 'SIGTERM'] as const).map(async (signal) => {
      const root = freshCopy(small);
      // Right when the new images.json is being written: the lock is held, the prune half done.
      const ended = await signalAtChange(1, signal, [CLI, 'prune-simplestreams', ...args(root)], {
        ...process.env,
        IMAGE_CI_TEST_CRASH_PATHS: 'images\\.json',
      });
      expect(ended?.signal).toBe(signal);
      expect(existsSync(join(root, LOCK))).toBe(false);
      const next = cli(args(root));
      expect(await next.code).toBe(0);
      expect(next.stderr.join('\n')).not.toContain('stale lock');
      expect(repoProblems(root)).toEqual([]);
    });
    await Promise.all(runs);
  });

  it('releases the lock also when the signal comes as the lock is being taken, right after link() made it', async () => {
    const args = (root: string) => ['--path', root, '--keep-versions', '1', '--grace-period', '0s'];
    const root = freshCopy(small);
    // The first change to the lock's own path is the link() that creates it; the lock's temp file does not match.
    const ended = await signalAtChange(1, 'SIGTERM', [CLI, 'prune-simplestreams', ...args(root)], {
      ...process.env,
      IMAGE_CI_TEST_CRASH_PATHS: `/${LOCK.replace(/\./g, '\\.')}$`,
    });
    expect(ended?.signal).toBe('SIGTERM');
    expect(existsSync(join(root, LOCK))).toBe(false);
  });

  it('ends by the signal while it waits for a lock that is a FIFO (reading one would wait for a writer)', async () => {
    const root = freshCopy(small);
    execFileSync('mkfifo', [join(root, LOCK)]);
    const run = cli(['--path', root, '--lock-timeout', '10m']);
    await run.waitFor('Taking the repository lock');
    // Signalled once its handler is in place (SigCgt: the signals a process catches), so it is the handler that
    // has to end the process, not the signal's default action.
    const sigterm = 1n << 14n;
    const catching = () =>
      BigInt(`0x${/^SigCgt:\s*(\w+)/m.exec(readFileSync(`/proc/${run.pid}/status`, 'utf8'))![1]}`);
    while ((catching() & sigterm) === 0n) await new Promise((resolve) => setTimeout(resolve, 10));
    process.kill(run.pid, 'SIGTERM');
    expect(await run.signal).toBe('SIGTERM');
    // Nobody's lock this run took: it stays.
    expect(lstatSync(join(root, LOCK)).isFIFO()).toBe(true);
  });
});

describe('concurrency', () => {
  it('fails clearly when the lock stays held past lock-timeout, changing nothing', async () => {
    const root = freshCopy();
    const lock = await acquireLock(join(root, LOCK), { timeoutMs: 1000, purpose: 'test publisher' });
    try {
      const before = snapshotTree(root);
      const run = cli(['--path', root, '--lock-timeout', '1s']);
      expect(await run.code).toBe(1);
      expect(run.stderr.join('\n')).toMatch(
        new RegExp(`is held by pid ${process.pid} on .* for longer than lock-timeout`),
      );
      expect(snapshotTree(root)).toEqual(before);
    } finally {
      await lock.release();
    }
  });

  it('two prunes at once: both wait for a publisher, then run one after the other', async () => {
    const reference = freshCopy();
    expect(await cli(['--path', reference, '--keep-versions', '2']).code).toBe(0);

    const root = freshCopy();
    const lock = await acquireLock(join(root, LOCK), { timeoutMs: 1000, purpose: 'test publisher' });
    const reports = [join(base, `a-${counter}.json`), join(base, `b-${counter}.json`)];
    const runs = reports.map((r) => cli(['--path', root, '--keep-versions', '2', '--report-file', r]));
    await Promise.all(runs.map((r) => r.waitFor('Taking the repository lock')));
    await lock.release();
    expect(await Promise.all(runs.map((r) => r.code))).toEqual([0, 0]);
    const [a, b] = reports.map((r) => JSON.parse(readFileSync(r, 'utf8')).lock);
    expect(a.releasedAt <= b.acquiredAt || b.releasedAt <= a.acquiredAt).toBe(true);
    expect(repoProblems(root)).toEqual([]);
    const got = pruneOutcome(root);
    const want = pruneOutcome(reference);
    expect({ ...got, state: undefined }).toEqual({ ...want, state: undefined });
    expect(Object.keys(JSON.parse(got.state).unreferencedSince)).toEqual(
      Object.keys(JSON.parse(want.state).unreferencedSince),
    );
  });
});
