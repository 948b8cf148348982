/**
 * The repository lock (core/atomic.ts) as prune-simplestreams uses it: a lock appears whole or not at all,
 * empty/unreadable and dead-owner locks are taken over (with a warning naming them), live or unknown owners are
 * waited for, and waiters that all judge one lock stale let exactly one of them in.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import {
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import { acquireLock, LockTimeoutError, type Lock, type LockOptions } from '../../src/core/atomic.js';
import { mapLimit } from '../../src/core/pool.js';

const base = mkdtempSync(join(tmpdir(), 'ici-prune-lock-'));
afterAll(() => rmSync(base, { recursive: true, force: true }));

const MINUTE = 60_000;

function lockPath(): string {
  return join(mkdtempSync(join(base, 'd')), '.image-ci-prune.lock');
}

function writeAged(path: string, content: string, ageMs: number): void {
  writeFileSync(path, content);
  const t = (Date.now() - ageMs) / 1000;
  utimesSync(path, t, t);
}

async function deadPid(): Promise<number> {
  const child = spawn('true');
  await new Promise((resolve) => child.on('close', resolve));
  return child.pid!;
}

/** The owner fields this machine would write, for crafting locks of other processes on the same host. */
function hereIdentity(): { boot: string; pidns: string } {
  return {
    boot: readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(),
    pidns: readlinkSync('/proc/self/ns/pid'),
  };
}

function options(o: Partial<LockOptions> = {}): LockOptions & { warnings: string[] } {
  const warnings: string[] = [];
  return { timeoutMs: 300, pollMs: 20, warn: (m) => warnings.push(m), warnings, ...o };
}

async function timesOut(path: string, o: LockOptions): Promise<LockTimeoutError> {
  const error = await acquireLock(path, o).then(
    (lock) => lock.release().then(() => undefined),
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(LockTimeoutError);
  return error as LockTimeoutError;
}

describe('stale lock rules', () => {
  it.each([
    ['empty', ''],
    ['half-written', '{"pid":12'],
    ['not JSON', 'hello\n'],
    ['naming no process', JSON.stringify({ pid: -1, host: hostname(), time: '2024-01-01T00:00:00Z' })],
  ])(
    'takes over a lock that is %s and older than one minute, with a warning naming it',
    async (_, content) => {
      const path = lockPath();
      writeAged(path, content, 2 * MINUTE);
      const o = options();
      const lock = await acquireLock(path, o);
      expect(JSON.parse(readFileSync(path, 'utf8'))).toMatchObject({ pid: process.pid, host: hostname() });
      expect(o.warnings).toEqual([
        expect.stringMatching(
          new RegExp(`^removed the stale lock ${path}: it is empty or unreadable and 2m[0-9]+s old$`),
        ),
      ]);
      await lock.release();
      expect(readdirSync(join(path, '..'))).toEqual([]);
    },
  );

  it('waits for a fresh empty lock (its writer may still be filling it) and names it in the timeout', async () => {
    const path = lockPath();
    writeAged(path, '', 30_000);
    const o = options();
    const error = await timesOut(path, o);
    expect(error.message).toBe(
      `lock ${path} is held by an unknown owner (the file is empty or unreadable; ` +
        'it counts as stale 1m0s after it was written)',
    );
    expect(readFileSync(path, 'utf8')).toBe('');
    expect(o.warnings).toEqual([]);

    let acquired = false;
    const waiting = acquireLock(path, options({ timeoutMs: 60_000 })).then((lock) => {
      acquired = true;
      return lock;
    });
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(acquired).toBe(false);
    rmSync(path);
    await (await waiting).release();
  });

  it('waits for a fresh lock whose pid cannot name a process, like any unreadable lock', async () => {
    const path = lockPath();
    writeFileSync(path, JSON.stringify({ pid: 1.5, host: hostname(), time: new Date().toISOString() }));
    expect((await timesOut(path, options())).message).toContain('held by an unknown owner');
  });

  it('takes over a lock whose pid now belongs to another process (start time differs)', async () => {
    const path = lockPath();
    const reused = { pid: process.pid, host: hostname(), time: new Date().toISOString(), ...hereIdentity() };
    writeFileSync(path, JSON.stringify({ ...reused, start: '1' }));
    const o = options();
    await (await acquireLock(path, o)).release();
    expect(o.warnings).toEqual([
      `removed the stale lock ${path}: pid ${process.pid} on ${hostname()} is another process now`,
    ]);
  });

  it('takes over a lock written before this host restarted', async () => {
    const path = lockPath();
    const owner = { pid: process.pid, host: hostname(), time: '2024-01-01T00:00:00Z', ...hereIdentity() };
    writeFileSync(path, JSON.stringify({ ...owner, boot: '00000000-0000-0000-0000-000000000000' }));
    const o = options();
    await (await acquireLock(path, o)).release();
    expect(o.warnings).toEqual([
      `removed the stale lock ${path}: ${hostname()} restarted since pid ${process.pid} took it`,
    ]);
  });

  it('does not judge a pid from another pid namespace (a container sharing the host name)', async () => {
    const path = lockPath();
    const owner = {
      pid: await deadPid(),
      host: hostname(),
      time: new Date().toISOString(),
      boot: hereIdentity().boot,
      pidns: 'pid:[1]',
    };
    writeFileSync(path, JSON.stringify(owner));
    const error = await timesOut(path, options());
    expect(error.message).toContain(`held by pid ${owner.pid} on ${hostname()}`);
  });

  it('takes over the lock of a dead pid on this host at once, and sweeps temp files and guards it left', async () => {
    const path = lockPath();
    const dead = JSON.stringify({ pid: await deadPid(), host: hostname(), time: new Date().toISOString() });
    writeFileSync(path, dead);
    writeFileSync(`${path}.takeover`, dead);
    const dir = join(path, '..');
    writeFileSync(join(dir, '..image-ci-prune.lock.0badf00d.tmp'), dead);
    writeAged(join(dir, '..image-ci-prune.lock.00c0ffee.tmp'), '', 2 * MINUTE);
    // temp files are named as writeFileAtomic names them (`.<name>.<8 hex>.tmp`); a contender still creating
    // its lock, and files that only look alike, stay
    const live = JSON.stringify({ pid: process.pid, host: hostname(), time: new Date().toISOString() });
    writeFileSync(join(dir, '..image-ci-prune.lock.1234abcd.tmp'), live);
    writeAged(join(dir, '..image-ci-prune.lock.notours.tmp'), '', 2 * MINUTE);
    writeAged(join(dir, '.other.lock.deadbeef.tmp'), '', 2 * MINUTE);

    const o = options({ timeoutMs: 0 });
    const lock = await acquireLock(path, o);
    expect(o.warnings).toEqual([expect.stringMatching(/: its owner, pid \d+ on .*, is gone$/)]);
    expect(readdirSync(dir).sort()).toEqual([
      '..image-ci-prune.lock.1234abcd.tmp',
      '..image-ci-prune.lock.notours.tmp',
      '.image-ci-prune.lock',
      '.other.lock.deadbeef.tmp',
    ]);
    await lock.release();
  });
});

describe('lock creation and release', () => {
  it('never shows an empty or partial lock to a reader, over many acquisitions', async () => {
    const path = lockPath();
    // A reader on another thread, reading as fast as it can while this thread takes and releases the lock.
    const stop = new SharedArrayBuffer(4);
    const reader = new Worker(
      `const { workerData, parentPort } = require('node:worker_threads');
      const { readFileSync } = require('node:fs');
      const stop = new Int32Array(workerData.stop);
      const bad = new Set();
      let seen = 0;
      while (Atomics.load(stop, 0) === 0) {
        let text;
        try { text = readFileSync(workerData.path, 'utf8'); } catch { continue; }
        seen++;
        if (!/^\\{"pid":\\d+,.*\\}$/.test(text)) bad.add(text);
      }
      parentPort.postMessage({ seen, bad: [...bad] });`,
      { eval: true, workerData: { path, stop } },
    );
    const result = new Promise<{ seen: number; bad: string[] }>((resolve) => reader.once('message', resolve));
    for (let i = 0; i < 300; i++) await (await acquireLock(path, options())).release();
    Atomics.store(new Int32Array(stop), 0, 1);
    const { seen, bad } = await result;
    await reader.terminate();
    expect(seen).toBeGreaterThan(0);
    expect(bad).toEqual([]);
  });

  it('release removes only its own lock', async () => {
    const path = lockPath();
    const lock = await acquireLock(path, options());
    const other = JSON.stringify({ pid: 1, host: 'elsewhere', time: new Date().toISOString() });
    writeFileSync(path, other);
    await lock.release();
    expect(readFileSync(path, 'utf8')).toBe(other);
  });
});

describe('concurrent stale takeovers', () => {
  const staleKinds: Array<[string, (path: string) => Promise<void>]> = [
    ['an empty lock aged 2 minutes', async (path) => writeAged(path, '', 2 * MINUTE)],
    [
      'a dead owner',
      async (path) =>
        writeFileSync(
          path,
          JSON.stringify({ pid: await deadPid(), host: hostname(), time: new Date().toISOString() }),
        ),
    ],
  ];

  it.each(staleKinds)('%s: exactly one of four waiters wins, 25 rounds', async (_, makeStale) => {
    // Each round has a lock of its own and the losers' 150 ms waits are idle time: five rounds run at once.
    await mapLimit(Array.from({ length: 25 }), 5, async () => {
      const path = lockPath();
      await makeStale(path);
      const contenders = Array.from({ length: 4 }, () => options({ timeoutMs: 150 }));
      const results = await Promise.allSettled(contenders.map((o) => acquireLock(path, o)));
      const winners = results.filter((r): r is PromiseFulfilledResult<Lock> => r.status === 'fulfilled');
      expect(winners).toHaveLength(1);
      for (const r of results) {
        if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(LockTimeoutError);
      }
      expect(contenders.flatMap((o) => o.warnings)).toHaveLength(1);
      expect(JSON.parse(readFileSync(path, 'utf8')).pid).toBe(process.pid);
      await winners[0]!.value.release();
      expect(existsSync(path)).toBe(false);
      expect(readdirSync(join(path, '..'))).toEqual([]);
    });
  });
});
