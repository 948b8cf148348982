/**
 * The repository lock for real: prune main SIGKILLed at many points (each repository change it makes), then
 * another prune that must get in at once (`--lock-timeout 0s`) and converge; and separate processes that all
 * find one stale lock, of which exactly one may win.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { mapLimit } from '../../src/core/pool.js';
import { REPO_ROOT } from '../support/harness.js';
import { countChanges, crashPoints, killAtChange } from '../support/kill-at-change.js';
import {
  ageEmptyLockTemps,
  pruneOutcome,
  repoProblems,
  SimplestreamsRepo,
} from '../support/simplestreams-fixture.js';

const HOUR = 3_600_000;
const CLI = join(REPO_ROOT, 'dist/cli.js');
const ATOMIC = join(REPO_ROOT, 'lib/core/atomic.js');
const LOCK = '.image-ci-prune.lock';
const base = mkdtempSync(join(tmpdir(), 'ici-prune-lock-e2e-'));
let counter = 0;
let pristine: string;

beforeAll(() => {
  if (!existsSync(CLI) || !existsSync(ATOMIC)) {
    throw new Error('dist/ or lib/ is missing: run `npm run build` before the e2e tests');
  }
  pristine = join(base, 'pristine');
  const repo = new SimplestreamsRepo(pristine, 'nested');
  let previous: string | undefined;
  for (const v of ['20240201_01:00', '20240301_01:00', '20240401_01:00']) {
    repo.addVersion('debian:bookworm:default:amd64', v, { sidecars: true, deltaFrom: previous });
    previous = v;
  }
  repo.addVersion('alpine:3.19:default:amd64', '20240101_01:00', { sidecars: true });
  repo.addVersion('alpine:3.19:default:amd64', '20240201_01:00', { broken: true });
  repo.addOrphan('images/debian/bookworm/amd64/default/stale-upload.squashfs', 3 * HOUR);
  repo.write();
});
afterAll(() => rmSync(base, { recursive: true, force: true }));

function freshCopy(): string {
  const dir = join(base, `repo-${++counter}`);
  cpSync(pristine, dir, { recursive: true, preserveTimestamps: true });
  return dir;
}

interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

const pruneArgs = (root: string) => ['--path', root, '--keep-versions', '1', '--grace-period', '0s'];

function prune(
  root: string,
  extra: string[] = [],
): { child: ChildProcessWithoutNullStreams; done: Promise<Finished> } {
  const child = spawn(process.execPath, [CLI, 'prune-simplestreams', ...pruneArgs(root), ...extra], {
    env: { ...process.env, NODE_OPTIONS: '' },
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
  child.stdout.resume();
  const done = new Promise<Finished>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, stderr })),
  );
  return { child, done };
}

describe('prune main killed at any point (SIGKILL)', () => {
  it('leaves a valid repository, and the next prune gets the lock at once and converges', async () => {
    const reference = freshCopy();
    expect((await prune(reference).done).code).toBe(0);
    const expected = pruneOutcome(reference);
    const brokenBefore = repoProblems(pristine);
    expect(brokenBefore).toHaveLength(1); // the fixture's broken alpine version

    let killedWithLock = 0;
    const sweep = async (event: number): Promise<boolean> => {
      const root = freshCopy();
      const killed = await killAtChange(event, [CLI, 'prune-simplestreams', ...pruneArgs(root)]);
      if (!killed) return false;
      expect(repoProblems(root).filter((p) => !brokenBefore.includes(p))).toEqual([]);
      if (existsSync(join(root, LOCK))) killedWithLock++;
      const next = await prune(root, ['--lock-timeout', '0s']).done;
      expect({ code: next.code, log: next.code === 0 ? '' : next.stderr }).toEqual({ code: 0, log: '' });
      if (next.stderr.includes('removed the stale lock')) {
        expect(next.stderr).toMatch(
          new RegExp(`removed the stale lock ${root}/${LOCK}: its owner, pid \\d+`),
        );
      }
      if (ageEmptyLockTemps(root) > 0) {
        expect((await prune(root, ['--lock-timeout', '0s']).done).code).toBe(0);
      }
      expect(pruneOutcome(root)).toEqual(expected);
      return true;
    };
    // Every change while the lock is being taken, then every third one, the last one; two kills at a time. Each
    // must kill the run (the kill comes from inside, at that very change).
    const points = crashPoints(await countChanges([CLI, 'prune-simplestreams', ...pruneArgs(freshCopy())]));
    expect(points.length).toBeGreaterThan(10);
    for (let i = 0; i < points.length; i += 2) {
      const batch = points.slice(i, i + 2);
      expect(await Promise.all(batch.map(sweep))).toEqual(batch.map(() => true));
    }
    expect(killedWithLock).toBeGreaterThan(0);
  }, 900_000);
});

/** A separate process that takes the lock when told to and holds it until told again. */
function contender(path: string, timeoutMs: number) {
  const script = `
    import { acquireLock } from ${JSON.stringify(ATOMIC)};
    const say = (line) => process.stdout.write(line + '\\n');
    const next = () => new Promise((resolve) => process.stdin.once('data', resolve));
    say('ready');
    await next();
    try {
      const lock = await acquireLock(${JSON.stringify(path)}, {
        timeoutMs: ${timeoutMs}, pollMs: 20, warn: (m) => say('warn ' + m),
      });
      say('acquired');
      await next();
      await lock.release();
      say('released');
    } catch (error) {
      say('failed ' + error.name);
    }
    process.stdin.destroy();`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
    env: { ...process.env, NODE_OPTIONS: '' },
  });
  const lines: string[] = [];
  const waiters: Array<() => void> = [];
  child.stdout.on('data', (chunk: Buffer) => {
    lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
    for (const w of waiters.splice(0)) w();
  });
  const closed = new Promise<number | null>((resolve) => child.on('close', resolve));
  const waitFor = async (pattern: RegExp): Promise<string> => {
    for (;;) {
      const line = lines.find((l) => pattern.test(l));
      if (line) return line;
      const ended = await Promise.race([
        new Promise<false>((resolve) => waiters.push(() => resolve(false))),
        closed.then(() => true),
      ]);
      if (ended && !lines.some((l) => pattern.test(l)))
        throw new Error(`contender ended: ${lines.join(' | ')}`);
    }
  };
  return { child, lines, waitFor, closed };
}

describe('concurrent stale takeovers (separate processes)', () => {
  it('three processes find one stale lock: exactly one wins, the others wait and time out', async () => {
    const dead = spawn('true');
    await new Promise((resolve) => dead.on('close', resolve));
    const staleKinds = [
      (path: string) => {
        writeFileSync(path, '');
        const old = new Date(Date.now() - 2 * 60_000);
        utimesSync(path, old, old);
      },
      (path: string) =>
        writeFileSync(
          path,
          JSON.stringify({ pid: dead.pid, host: hostname(), time: new Date().toISOString() }),
        ),
    ];
    // Each round races for a lock of its own, and most of a round is the losers' idle wait: four run at once.
    await mapLimit(
      Array.from({ length: 8 }, (_, round) => round),
      4,
      async (round) => {
        const path = join(mkdtempSync(join(base, 'race-')), LOCK);
        staleKinds[round % 2]!(path);
        const contenders = [0, 1, 2].map(() => contender(path, 1500));
        await Promise.all(contenders.map((c) => c.waitFor(/^ready$/)));
        for (const c of contenders) c.child.stdin.write('go\n');
        const outcomes = await Promise.all(contenders.map((c) => c.waitFor(/^(acquired|failed)/)));
        expect(outcomes.filter((o) => o === 'acquired')).toHaveLength(1);
        expect(outcomes.filter((o) => o !== 'acquired')).toEqual([
          'failed LockTimeoutError',
          'failed LockTimeoutError',
        ]);
        expect(contenders.flatMap((c) => c.lines).filter((l) => l.startsWith('warn '))).toEqual([
          expect.stringContaining(`warn removed the stale lock ${path}: `),
        ]);
        const winner = contenders[outcomes.indexOf('acquired')]!;
        expect(JSON.parse(readFileSync(path, 'utf8')).pid).toBe(winner.child.pid);
        winner.child.stdin.write('release\n');
        await winner.waitFor(/^released$/);
        expect(await Promise.all(contenders.map((c) => c.closed))).toEqual([0, 0, 0]);
        expect(readdirSync(join(path, '..'))).toEqual([]);
      },
    );
  });
});
