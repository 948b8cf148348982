/**
 * Crash-safe file replacement and advisory locks. A reader either sees the old file or the new one, never a
 * half-written one, and a crash between steps leaves at most a stray temp file.
 */
import { randomBytes } from 'node:crypto';
import { link, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { processAlive, sleep } from './process.js';

/** fsyncs a directory so a rename inside it survives a power loss. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes to a temp file in the same directory, fsyncs it, renames it over `path`, and fsyncs the directory. */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const dir = dirname(path);
  const temp = join(dir, `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
  const handle = await open(temp, 'wx', mode);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
  await fsyncDir(dir);
}

export interface LockOwner {
  pid: number;
  host: string;
  time: string;
  purpose?: string;
}

export interface LockOptions {
  /** Give up after this long waiting for another owner. */
  timeoutMs: number;
  /** A lock older than this is stale whatever its owner (a crashed machine cannot release it). */
  staleMs?: number;
  pollMs?: number;
  purpose?: string;
}

export class LockTimeoutError extends Error {
  constructor(
    readonly path: string,
    readonly owner: LockOwner | undefined,
  ) {
    const who = owner ? `pid ${owner.pid} on ${owner.host} since ${owner.time}` : 'an unknown owner';
    super(`lock ${path} is held by ${who}`);
    this.name = 'LockTimeoutError';
  }
}

export interface Lock {
  readonly path: string;
  release(): Promise<void>;
}

export async function readOwner(path: string): Promise<LockOwner | undefined> {
  try {
    const parsed = JSON.parse(await readFile(path, 'utf8')) as Partial<LockOwner>;
    if (
      typeof parsed.pid === 'number' &&
      typeof parsed.host === 'string' &&
      typeof parsed.time === 'string'
    ) {
      return parsed as LockOwner;
    }
  } catch {
    // unreadable or half-written: judged by its age below
  }
  return undefined;
}

export async function isStale(path: string, owner: LockOwner | undefined, staleMs: number): Promise<boolean> {
  if (owner && owner.host === hostname() && !processAlive(owner.pid)) return true;
  try {
    const info = await stat(path);
    return Date.now() - info.mtimeMs > staleMs;
  } catch {
    return false;
  }
}

function sameOwner(a: LockOwner | undefined, b: LockOwner | undefined): boolean {
  return a?.pid === b?.pid && a?.host === b?.host && a?.time === b?.time;
}

/**
 * Moves a stale lock aside and deletes it. Two waiters may both judge the same lock stale; if the file we moved
 * turns out to be a fresh lock another waiter took in between, it is put back (link fails if yet another exists).
 */
async function breakStaleLock(path: string, staleOwner: LockOwner | undefined): Promise<void> {
  const aside = `${path}.stale-${randomBytes(4).toString('hex')}`;
  try {
    await rename(path, aside);
  } catch {
    return; // someone else cleared it first
  }
  const moved = await readOwner(aside);
  if (!sameOwner(moved, staleOwner)) {
    await link(aside, path).catch(() => undefined);
  }
  await rm(aside, { force: true });
}

/**
 * Takes an exclusive advisory lock by creating `path` with O_EXCL. The file names its owner so a waiting
 * process can tell a live holder from a stale one (dead pid on this host, or older than staleMs).
 */
export async function acquireLock(path: string, options: LockOptions): Promise<Lock> {
  const staleMs = options.staleMs ?? 6 * 3_600_000;
  const pollMs = options.pollMs ?? 200;
  const deadline = Date.now() + options.timeoutMs;
  const me: LockOwner = { pid: process.pid, host: hostname(), time: new Date().toISOString() };
  if (options.purpose) me.purpose = options.purpose;
  for (;;) {
    try {
      const handle = await open(path, 'wx', 0o644);
      try {
        await handle.writeFile(JSON.stringify(me));
        await handle.sync();
      } finally {
        await handle.close();
      }
      let released = false;
      return {
        path,
        release: async () => {
          if (released) return;
          released = true;
          const owner = await readOwner(path);
          if (sameOwner(owner, me)) {
            await rm(path, { force: true });
          }
        },
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const owner = await readOwner(path);
    if (await isStale(path, owner, staleMs)) {
      await breakStaleLock(path, owner);
      continue;
    }
    if (Date.now() >= deadline) throw new LockTimeoutError(path, owner);
    await sleep(pollMs);
  }
}

export async function withLock<T>(path: string, options: LockOptions, fn: () => Promise<T>): Promise<T> {
  const lock = await acquireLock(path, options);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}
