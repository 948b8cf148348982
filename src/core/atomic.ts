/**
 * Crash-safe file replacement and advisory locks. A reader either sees the old file or the new one, never a
 * half-written one, and a crash between steps leaves at most a stray temp file (which the lock code sweeps up).
 */
import { randomBytes } from 'node:crypto';
import { closeSync, constants, fstatSync, openSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { link, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { processAlive, sleep } from './process.js';
import { formatDuration } from './summary.js';

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
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
  } catch (error) {
    // A write that failed (ENOSPC, EDQUOT) leaves a partial copy: on a full file system it is space the caller
    // may need to recover with (a prune's images.json can be tens of MB).
    await rm(temp, { force: true });
    throw error;
  }
  await fsyncDir(dir);
}

/** The temp name writeFileAtomic writes `.<name>.<8 hex>.tmp` under, before renaming it to `<name>`. */
const ATOMIC_TEMP = /^\..+\.[0-9a-f]{8}\.tmp$/;

/**
 * Removes what writeFileAtomic leaves in `dir` when its process is killed between creating the temp file and the
 * rename; returns the names removed. Only for a dir no other process is writing in at the time (such as a job's
 * own dir, from post): a live writer's temp file would go too.
 */
export async function removeAtomicTemps(dir: string): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!ATOMIC_TEMP.test(name)) continue;
    await rm(join(dir, name), { force: true });
    removed.push(name);
  }
  return removed;
}

/**
 * What a lock file holds. Publishers may write just pid, host and time; the rest is what this module adds so a
 * waiter can tell a dead owner from a live one without waiting for the age rule.
 */
export interface LockOwner {
  pid: number;
  host: string;
  time: string;
  purpose?: string;
  /** Random, one per acquisition: release() removes only its own lock, even within one process. */
  id?: string;
  /** Linux: the kernel's boot id. Another boot id under the same host name means the owner's machine restarted. */
  boot?: string;
  /** Linux: the pid namespace (`pid:[…]`). Containers may share a host name; a pid means nothing in another one. */
  pidns?: string;
  /** Linux: the owner's start time (clock ticks after boot, /proc/<pid>/stat field 22): a reused pid differs. */
  start?: string;
}

export interface LockOptions {
  /** Give up after this long waiting for another owner. */
  timeoutMs: number;
  /** A lock older than this is stale whatever its owner (a crashed machine cannot release it). */
  staleMs?: number;
  pollMs?: number;
  purpose?: string;
  /** Told about each stale lock removed, naming the file and why (so a takeover is never silent). */
  warn?: (message: string) => void;
  /**
   * From the first attempt until release(), SIGINT, SIGTERM or SIGHUP remove the lock if it is this caller's and
   * end the process by that signal (see releaseOnSignal).
   */
  releaseOnSignal?: boolean;
}

/**
 * A lock (or a temp file of one) that is empty or unreadable after this long was left by a process killed while
 * creating it, or by a publisher that writes its lock in two steps: no live owner takes a minute to do that.
 * The takeover guard and the temp files are held for milliseconds, so the same limit applies to them.
 */
const INCOMPLETE_LOCK_STALE_MS = 60_000;
const DEFAULT_STALE_MS = 6 * 3_600_000;

export class LockTimeoutError extends Error {
  constructor(
    readonly path: string,
    readonly owner: LockOwner | undefined,
  ) {
    const who = owner
      ? `pid ${owner.pid} on ${owner.host} since ${owner.time}`
      : `an unknown owner (the file is empty or unreadable; it counts as stale ` +
        `${formatDuration(INCOMPLETE_LOCK_STALE_MS)} after it was written)`;
    super(`lock ${path} is held by ${who}`);
    this.name = 'LockTimeoutError';
  }
}

export interface Lock {
  readonly path: string;
  release(): Promise<void>;
  /** release() in one synchronous step: for a signal handler, after which this process does nothing more. */
  releaseSync(): void;
}

function readOrUndefined(read: () => string): string | undefined {
  try {
    return read().trim();
  } catch {
    return undefined; // not Linux, or /proc not mounted: the owner is judged by host and pid alone
  }
}

let here: { boot?: string; pidns?: string } | undefined;

function hostIdentity(): { boot?: string; pidns?: string } {
  here ??= {
    boot: readOrUndefined(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8')),
    pidns: readOrUndefined(() => readlinkSync('/proc/self/ns/pid')),
  };
  return here;
}

function processStart(pid: number): string | undefined {
  const stat = readOrUndefined(() => readFileSync(`/proc/${pid}/stat`, 'utf8'));
  // The command name (field 2) may hold spaces and parentheses: count fields after its closing ')'.
  return stat?.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
}

/** A record naming this process as a lock holds it; also used for other owner files (cache-dir's readers). */
export function ownerRecord(purpose: string | undefined): LockOwner {
  const { boot, pidns } = hostIdentity();
  const start = processStart(process.pid);
  return {
    pid: process.pid,
    host: hostname(),
    time: new Date().toISOString(),
    ...(purpose ? { purpose } : {}),
    id: randomBytes(8).toString('hex'),
    ...(boot ? { boot } : {}),
    ...(pidns ? { pidns } : {}),
    ...(start ? { start } : {}),
  };
}

function parseOwner(raw: string): LockOwner | undefined {
  try {
    const parsed = JSON.parse(raw) as Partial<LockOwner> | null;
    const pid = parsed?.pid;
    // A pid that is not a positive whole number cannot name a process (and process.kill would throw on it).
    if (
      typeof pid === 'number' &&
      Number.isSafeInteger(pid) &&
      pid > 0 &&
      typeof parsed?.host === 'string' &&
      typeof parsed.time === 'string'
    ) {
      return parsed as LockOwner;
    }
  } catch {
    // half-written or not ours: judged by its age
  }
  return undefined;
}

/** Why the owner certainly no longer runs, or undefined when it may (another host or pid namespace: unknown). */
function ownerGone(owner: LockOwner | undefined): string | undefined {
  if (!owner || owner.host !== hostname()) return undefined;
  const { boot, pidns } = hostIdentity();
  if (owner.boot && boot && owner.boot !== boot)
    return `${owner.host} restarted since pid ${owner.pid} took it`;
  if (owner.pidns && owner.pidns !== pidns) return undefined;
  if (!processAlive(owner.pid)) return `its owner, pid ${owner.pid} on ${owner.host}, is gone`;
  const start = owner.start && processStart(owner.pid);
  if (start && start !== owner.start) return `pid ${owner.pid} on ${owner.host} is another process now`;
  return undefined;
}

interface LockFile {
  raw: string;
  owner?: LockOwner;
  ino: number;
  mtimeMs: number;
}

/**
 * Content and status of one file read through one handle (so both belong to the same file); undefined if gone.
 * Opened without blocking: a FIFO put where a lock or registration belongs would hold the read forever; anything
 * but a regular file or a directory reads as empty (no owner), so it is judged stale by its age.
 */
async function inspect(path: string): Promise<LockFile | undefined> {
  let handle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  try {
    const info = await handle.stat();
    // A directory is no lock anybody took: callers tell it apart, as when reading it failed with EISDIR.
    if (info.isDirectory()) {
      throw Object.assign(new Error(`EISDIR: illegal operation on a directory, read '${path}'`), {
        code: 'EISDIR',
      });
    }
    const raw = info.isFile() ? await handle.readFile('utf8') : '';
    return { raw, owner: parseOwner(raw), ino: info.ino, mtimeMs: info.mtimeMs };
  } finally {
    await handle.close();
  }
}

interface Attempt {
  created: boolean;
  /** The file system's clock (our temp file's mtime): ages are judged by it, so NFS clock skew does not count. */
  fsNowMs: number;
}

const tempPrefix = (lockPath: string) => `.${basename(lockPath)}.`;
const tempName = (lockPath: string) =>
  join(dirname(lockPath), `${tempPrefix(lockPath)}${randomBytes(4).toString('hex')}.tmp`);

/**
 * Creates `path` holding `content` in one step, or reports that it exists: the content goes to a temp file in the
 * same directory (fsynced), which is then link()ed into place. link never replaces an existing file and is
 * atomic on NFS too (where O_EXCL once was not); a link whose reply was lost reports EEXIST although it worked,
 * which the temp file's link count reveals (open(2), "O_EXCL"). A kill at any point leaves either no lock or a
 * complete one, plus at most a temp file that sweepLeftovers removes.
 */
async function createWhole(path: string, lockPath: string, content: string): Promise<Attempt> {
  const temp = tempName(lockPath);
  const handle = await open(temp, 'wx', 0o644);
  let fsNowMs: number;
  try {
    await handle.writeFile(content);
    await handle.sync();
    fsNowMs = (await handle.stat()).mtimeMs;
  } finally {
    await handle.close();
  }
  try {
    await link(temp, path);
    return { created: true, fsNowMs };
  } catch (error) {
    if ((await stat(temp)).nlink === 2) return { created: true, fsNowMs };
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return { created: false, fsNowMs };
    throw error;
  } finally {
    await rm(temp, { force: true });
  }
}

/** Why a lock file is stale, or undefined while its owner may still be working. */
function staleReason(file: LockFile, fsNowMs: number, staleMs: number): string | undefined {
  const ageMs = fsNowMs - file.mtimeMs;
  if (!file.owner) {
    return ageMs > INCOMPLETE_LOCK_STALE_MS
      ? `it is empty or unreadable and ${formatDuration(ageMs)} old`
      : undefined;
  }
  return ownerGone(file.owner) ?? (ageMs > staleMs ? `it is ${formatDuration(ageMs)} old` : undefined);
}

/**
 * An owner file written with ownerRecord (a lock, or a registration such as cache-dir's readers) as it stands:
 * its owner if readable, and whether it is stale by the same rules a lock is. Undefined when it is gone.
 */
export async function judgeOwnerFile(
  path: string,
  staleMs: number,
): Promise<{ owner?: LockOwner; stale: boolean } | undefined> {
  const file = await inspect(path);
  if (!file) return undefined;
  return { owner: file.owner, stale: staleReason(file, Date.now(), staleMs) !== undefined };
}

/** A file held only for a moment (takeover guard, temp file) is garbage once its owner is gone or a minute passed. */
function isLeftover(file: LockFile, fsNowMs: number): boolean {
  return ownerGone(file.owner) !== undefined || fsNowMs - file.mtimeMs > INCOMPLETE_LOCK_STALE_MS;
}

/**
 * Removes a takeover guard left by a waiter killed mid-takeover; returns whether it did. Two waiters may judge
 * it at once: it is moved to a unique name first and checked to be the very file judged (a fresh guard taken
 * meanwhile is put back).
 */
async function removeLeftoverGuard(guard: string, lockPath: string, fsNowMs: number): Promise<boolean> {
  const held = await inspect(guard);
  if (!held || !isLeftover(held, fsNowMs)) return false;
  const aside = tempName(lockPath);
  try {
    await rename(guard, aside);
  } catch {
    return false; // another waiter moved it first
  }
  const moved = await inspect(aside);
  const fresh = moved !== undefined && (moved.ino !== held.ino || moved.raw !== held.raw);
  if (fresh) await link(aside, guard).catch(() => undefined);
  await rm(aside, { force: true });
  return !fresh;
}

interface Contender {
  path: string;
  content: string;
  staleMs: number;
  warn?: (message: string) => void;
}

/**
 * Removes a stale lock so the caller can compete for it again. Waiters that all judge one lock stale must not
 * each remove it (the second would remove the first one's fresh lock): removal happens only while holding a
 * guard file, created the same all-or-nothing way, and the lock is judged again under the guard. Returns
 * whether this waiter removed the lock (or a guard left by a killed waiter), so it should compete again at
 * once; everyone competes through link(), which exactly one wins.
 */
async function takeOver(c: Contender): Promise<boolean> {
  const guard = `${c.path}.takeover`;
  const attempt = await createWhole(guard, c.path, c.content);
  if (!attempt.created) return removeLeftoverGuard(guard, c.path, attempt.fsNowMs);
  try {
    const held = await inspect(c.path);
    const why = held && staleReason(held, attempt.fsNowMs, c.staleMs);
    if (!why) return false;
    await rm(c.path, { force: true });
    c.warn?.(`removed the stale lock ${c.path}: ${why}`);
    return true;
  } finally {
    const mine = await inspect(guard);
    if (mine?.raw === c.content) await rm(guard, { force: true });
  }
}

/** Temp files and a takeover guard left by killed contenders; run by the new holder, so nobody else is creating. */
async function sweepLeftovers(lockPath: string, fsNowMs: number): Promise<void> {
  const prefix = tempPrefix(lockPath);
  const names = await readdir(dirname(lockPath)).catch(() => [] as string[]);
  for (const name of names) {
    if (!name.startsWith(prefix) || !/^[0-9a-f]{8}\.tmp$/.test(name.slice(prefix.length))) continue;
    const file = join(dirname(lockPath), name);
    const held = await inspect(file).catch(() => undefined);
    if (held && isLeftover(held, fsNowMs)) await rm(file, { force: true });
  }
  await removeLeftoverGuard(`${lockPath}.takeover`, lockPath, fsNowMs);
}

/**
 * Takes an exclusive advisory lock: `path` appears whole, naming its owner (createWhole), or not at all. A waiter
 * takes over a stale lock: its owner is gone (same host, same pid namespace: the pid is dead or now another
 * process, or the host restarted), it is older than staleMs, or it is empty/unreadable and older than a minute.
 */
export async function acquireLock(path: string, options: LockOptions): Promise<Lock> {
  const pollMs = options.pollMs ?? 200;
  const deadline = Date.now() + options.timeoutMs;
  const me = ownerRecord(options.purpose);
  const c: Contender = {
    path,
    content: JSON.stringify(me),
    staleMs: options.staleMs ?? DEFAULT_STALE_MS,
    warn: options.warn,
  };
  // Listening before the first link(): a signal between link() making the lock and the caller's next step would
  // end the process with the lock left, which another host can only judge by its age (staleMs). releaseSync removes
  // a lock only while it holds this attempt's content, so a signal while waiting leaves the owner's lock alone.
  let stopListening: (() => void) | undefined;
  const lock = heldLock(path, c.content, () => stopListening?.());
  if (options.releaseOnSignal) stopListening = releaseOnSignal(lock);
  try {
    for (;;) {
      const attempt = await createWhole(path, path, c.content);
      if (attempt.created) {
        await sweepLeftovers(path, attempt.fsNowMs);
        return lock;
      }
      const held = await inspect(path);
      if (!held) continue; // released meanwhile: compete again at once
      if (staleReason(held, attempt.fsNowMs, c.staleMs) && (await takeOver(c))) continue;
      if (Date.now() >= deadline) throw new LockTimeoutError(path, held.owner);
      await sleep(pollMs);
    }
  } catch (error) {
    stopListening?.();
    throw error;
  }
}

function heldLock(path: string, content: string, onReleased?: () => void): Lock {
  let released = false;
  return {
    path,
    release: async () => {
      try {
        if (released) return;
        released = true;
        // Only our own: a lock judged stale (a prune that ran past staleMs) may belong to someone else by now.
        if ((await inspect(path))?.raw === content) await rm(path, { force: true });
      } finally {
        // Only once the lock is gone: a signal meanwhile still has releaseSync remove it.
        onReleased?.();
      }
    },
    releaseSync: () => {
      released = true;
      let raw: string;
      try {
        // Without blocking, as inspect: a FIFO where the lock belongs (one waited for, or swapped in) would hold
        // the signal handler, and so the end of the process, until someone wrote to it.
        const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
        try {
          if (!fstatSync(fd).isFile()) return;
          raw = readFileSync(fd, 'utf8');
        } finally {
          closeSync(fd);
        }
      } catch {
        return; // gone (taken over as stale, then released by its taker)
      }
      if (raw === content) rmSync(path, { force: true });
    },
  };
}

const ENDING_SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/**
 * Until the returned function is called, SIGINT, SIGTERM or SIGHUP (a cancelled workflow run: the runner sends
 * SIGINT, then SIGTERM) releases `lock` and ends the process by that signal. A lock left by a process that is gone
 * is taken over at once only on its own host: from another one (a repository shared over NFS), only once it is
 * staleMs (6 h) old, and every prune and publisher until then waits in vain. Released synchronously: the handler
 * runs between two steps of the work, and no later step may run without the lock.
 */
export function releaseOnSignal(lock: Lock): () => void {
  const onSignal = (signal: NodeJS.Signals) => {
    for (const s of ENDING_SIGNALS) process.removeListener(s, onSignal);
    lock.releaseSync();
    process.kill(process.pid, signal);
  };
  for (const s of ENDING_SIGNALS) process.on(s, onSignal);
  return () => {
    for (const s of ENDING_SIGNALS) process.removeListener(s, onSignal);
  };
}
