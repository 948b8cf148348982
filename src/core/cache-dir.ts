/**
 * The directory cache backend, for CI systems that mount a persistent volume (the CLI's --cache-dir). Same
 * contract as the Actions cache: entries are versioned by the path strings, restored by exact key then by
 * newest prefix match of the key and restore keys, and the first writer of a key wins.
 *
 * Layout under the root:
 *   entries/<version>/<sha256(key)>/entry.json    what the entry is (never modified once published)
 *                                  /archive.tar.zst   directories: a zstd tar, extracted on restore
 *                                  /files/<n>         regular files: stored as they are, read-only
 *                                  /used              its mtime says when the entry was last restored
 *                                  /readers/<id>      restores in progress (shared lock against eviction)
 *                                  /evicting          held while an eviction decides (exclusive lock)
 *   tmp/<random>/                                 entries being written, or being evicted
 *      <random>.owner                             the job doing that (written first, removed last)
 * An entry is written in tmp, fsynced, then renamed into place in one step: readers never see half an entry,
 * a crash leaves only a stray tmp dir, and a rename onto an existing entry fails, so concurrent writers of one
 * key cannot clobber each other (the loser reports 'exists').
 *
 * Files are kept as they are because what gets cached as a file here is already compressed (a `.zst` machine
 * disk): tar + zstd would only spend a minute to gain nothing. Restoring one is then O(1) on one filesystem: a
 * hard link where the caller only reads it, else a reflink copy; a byte copy only when neither can be had.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants, existsSync } from 'node:fs';
import {
  chmod,
  copyFile,
  link,
  lstat,
  mkdir,
  open,
  readdir,
  rename,
  rm,
  stat,
  statfs,
  lutimes,
  writeFile,
  type FileHandle,
} from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import type { BackendRestore, RestoreOptions, SaveResult } from './cache.js';
import { cacheCallTimeoutMs } from './cache-actions.js';
import {
  acquireLock,
  fsyncDir,
  judgeOwnerFile,
  ownerRecord,
  writeFileAtomic,
  type Lock,
  type LockOwner,
} from './atomic.js';
import { EntryRefused, printable } from './cache-confinement.js';
import { matchedKeyProblem } from './cache-key.js';
import { extractConfined } from './cache-dir-extract.js';
import { exec } from './exec.js';
import { readRegularFile } from './files.js';
import type { Host } from './host.js';
import { readSizeEnv } from './inputs.js';
import { formatBytes } from './summary.js';
import { errorMessage } from './run.js';
import { TarFormatError } from './tar-members.js';

export const CACHE_DIR_MAX_SIZE_ENV = 'IMAGE_CI_CACHE_DIR_MAX_SIZE';
const ARCHIVE = 'archive.tar.zst';
const FILES = 'files';
const META = 'entry.json';
const USED = 'used';
const READERS = 'readers';
/**
 * A tmp dir this old belongs to a writer that crashed (no save takes a day); it is removed by the next save. One
 * whose writer (or evicting job) ran on this host and is gone is removed at once: a killed job must not leave
 * gigabytes the budget does not count.
 */
const STALE_TEMP_MS = 24 * 3_600_000;
const OWNER_SUFFIX = '.owner';
/** A reader registration this old is from a restore that died on another host (same host: its pid is checked). */
const STALE_READER_MS = 6 * 3_600_000;
/** An eviction holds its lock for a look at the readers and a rename: milliseconds. */
const STALE_EVICTING_MS = 60_000;
const EVICTING = 'evicting';
/** Bumped if the archive format changes, so old entries are not misread. */
const FORMAT = 'ici-dir-1';

interface StoredFile {
  /** Where the file is restored to (absolute). */
  path: string;
  /** Inside the entry dir. */
  name: string;
  size: number;
  /**
   * The stored file's mtime once written. A job may write a file restored as a hard link (root ignores its
   * 0444), which changes the entry's bytes for everyone; its mtime then differs.
   */
  mtimeMs?: number;
}

interface EntryMeta {
  key: string;
  version: string;
  paths: string[];
  sizeBytes: number;
  createdAt: number;
  /** Absent in entries written before files were stored as they are: those are archives. */
  format?: 'tar' | 'files';
  files?: StoredFile[];
}

type Entry = EntryMeta & { dir: string };

/** Like @actions/cache's version: a hash of the path strings exactly as given, plus the archive format. */
export function dirCacheVersion(paths: readonly string[]): string {
  return createHash('sha256')
    .update([...paths, 'zstd', FORMAT].join('|'))
    .digest('hex');
}

const entryName = (key: string) => createHash('sha256').update(key).digest('hex');

function entryDir(root: string, version: string, key: string): string {
  return join(root, 'entries', version, entryName(key));
}

/** More than any entry.json this backend writes (a path list and a few numbers). */
const MAX_META_BYTES = 1024 * 1024;

/**
 * The content of a regular file in the volume, or undefined for anything else. Never opened when it is a FIFO
 * or device, and a symlink is not followed: the volume is written by other jobs.
 */
async function readVolumeFile(path: string, maxBytes: number): Promise<string | undefined> {
  return readRegularFile(path, maxBytes, { followLinks: false }).then(
    (bytes) => bytes.toString('utf8'),
    () => undefined,
  );
}

/** The stored file names this backend writes; anything else would name a file outside the entry. */
const STORED_NAME = new RegExp(`^${FILES}/\\d+$`);

function wellFormed(meta: Partial<EntryMeta> | null, dir: string): meta is EntryMeta {
  // JSON reads 1e999 as Infinity: counted, such a size would leave the budget's total NaN, and every eviction
  // would run on to the last entry.
  const finite = (n: unknown): n is number => typeof n === 'number' && Number.isFinite(n);
  if (typeof meta?.key !== 'string' || !finite(meta.createdAt)) return false;
  if (!finite(meta.sizeBytes) || meta.sizeBytes < 0) return false;
  // Stored under another key's name, it would be taken for that key's exact match.
  if (basename(dir) !== entryName(meta.key)) return false;
  if (meta.format !== 'files') return true;
  return (
    Array.isArray(meta.files) &&
    meta.files.every(
      (f) =>
        typeof f?.path === 'string' &&
        typeof f.name === 'string' &&
        STORED_NAME.test(f.name) &&
        typeof f.size === 'number' &&
        (f.mtimeMs === undefined || typeof f.mtimeMs === 'number'),
    )
  );
}

async function readEntry(dir: string): Promise<Entry | undefined> {
  try {
    const raw = await readVolumeFile(join(dir, META), MAX_META_BYTES);
    const meta = raw === undefined ? undefined : (JSON.parse(raw) as Partial<EntryMeta> | null);
    if (meta !== undefined && wellFormed(meta, dir)) return { ...meta, dir };
  } catch {
    // not an entry (or damaged by hand): never matched
  }
  return undefined;
}

async function readEntries(root: string, version: string): Promise<Entry[]> {
  const versionDir = join(root, 'entries', version);
  let names: string[];
  try {
    names = await readdir(versionDir);
  } catch {
    return [];
  }
  const entries: Entry[] = [];
  for (const name of names) {
    const entry = await readEntry(join(versionDir, name));
    if (entry) entries.push(entry);
  }
  return entries;
}

/** Exact primary key first; then, for the key and each restore key in order, the newest prefix match. */
export function matchEntry<T extends { key: string; createdAt: number }>(
  entries: readonly T[],
  primaryKey: string,
  restoreKeys: readonly string[],
): T | undefined {
  const exact = entries.find((e) => e.key === primaryKey);
  if (exact) return exact;
  const newestFirst = [...entries].sort((a, b) => b.createdAt - a.createdAt);
  for (const prefix of [primaryKey, ...restoreKeys]) {
    const match = newestFirst.find((e) => e.key.startsWith(prefix));
    if (match) return match;
  }
  return undefined;
}

export interface ReaderLease {
  release(): Promise<void>;
}

/**
 * Registers a restore of the entry in `dir` (its shared lock): eviction leaves the entry alone while a live
 * registration exists. Undefined when the entry is gone (evicted between lookup and now) or being evicted.
 *
 * A reader registers, then looks for an eviction's lock; an eviction takes its lock, then looks for readers.
 * Whichever comes second sees the other, so an entry is never moved while a restore reads it (moving it aside
 * even for a moment would fail a restore that opens its next file then).
 */
export async function registerReader(dir: string): Promise<ReaderLease | undefined> {
  const me = ownerRecord('restore');
  const file = join(dir, READERS, `${process.pid}-${randomBytes(4).toString('hex')}`);
  for (let attempt = 0; ; attempt++) {
    try {
      await writeFile(file, JSON.stringify(me), { flag: 'wx' });
      const release = () => rm(file, { force: true });
      const evicting = await judgeOwnerFile(join(dir, EVICTING), STALE_EVICTING_MS);
      if (evicting && !evicting.stale) {
        await release();
        return undefined;
      }
      return { release };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || attempt > 0) return undefined;
    }
    // Entries published before restores registered have no readers dir. Not recursive: if the entry itself
    // is gone, this fails too, and the restore is a miss.
    try {
      await mkdir(join(dir, READERS));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') return undefined;
    }
  }
}

async function liveReaders(dir: string): Promise<LockOwner[]> {
  const names = await readdir(join(dir, READERS)).catch(() => [] as string[]);
  const live: LockOwner[] = [];
  for (const name of names) {
    const judged = await judgeOwnerFile(join(dir, READERS, name), STALE_READER_MS);
    if (judged && !judged.stale) live.push(judged.owner ?? { pid: 0, host: '?', time: '?' });
  }
  return live;
}

export async function restoreFromDirCache(
  host: Host,
  root: string,
  paths: string[],
  primaryKey: string,
  restoreKeys: string[],
  options: RestoreOptions,
): Promise<BackendRestore> {
  const entry = matchEntry(await readEntries(root, dirCacheVersion(paths)), primaryKey, restoreKeys);
  if (!entry) return {};
  // Keys are read from the volume, which other jobs write: one with control characters (never built by a
  // caller) would reach the log and the matched-key output. Refused as the stream restore refuses it.
  const unasked = matchedKeyProblem(entry.key, primaryKey, restoreKeys);
  if (unasked) return { refused: `the volume holds ${unasked}` };
  if (options.lookupOnly) return { matchedKey: entry.key };
  const lease = await registerReader(entry.dir);
  if (!lease) return {};
  try {
    const refused = await unrestorable(entry, paths);
    if (refused) return { refused: `${entry.dir} ${refused}` };
    const changed = await changedSinceSaved(entry);
    if (changed) {
      await lease.release();
      const removed = (await removeEntry(root, entry)) === 'removed';
      return {
        refused: `${entry.dir}: ${changed} since it was saved (written through a hard-linked restore?)${removed ? '; removed, so the next save replaces it' : ''}`,
      };
    }
    const now = new Date();
    // lutimes: `used` is the volume's content, and a symlink there must not let a restore touch another file.
    await lutimes(join(entry.dir, USED), now, now).catch(() => undefined);
    if (entry.format === 'files') {
      const stored = await openOwnDir(entry.dir, [FILES]).catch((error: unknown) => {
        throw error instanceof OwnDirMissing ? new StoredFileRefused(error.message) : error;
      });
      try {
        for (const file of entry.files ?? []) {
          const how = await placeFile(stored.path, file.name, file.path, options.readOnly ?? false);
          host.info(
            `Restored ${file.path} (${formatBytes(file.size)}) as ${how} of ${entry.dir}/${file.name}`,
          );
        }
      } finally {
        await stored.close();
      }
    } else {
      host.info(`Extracting ${formatBytes(entry.sizeBytes)} from ${entry.dir}`);
      // Bounded like every cache call: a tar stuck on its disk must not hold the job.
      await extractConfined(join(entry.dir, ARCHIVE), paths, cacheCallTimeoutMs());
    }
  } catch (error) {
    if (
      error instanceof EntryRefused ||
      error instanceof TarFormatError ||
      error instanceof StoredFileRefused
    ) {
      return { refused: `${entry.dir}: ${error.message}` };
    }
    throw error;
  } finally {
    await lease.release();
  }
  return { matchedKey: entry.key };
}

/**
 * Why the entry is no restore of `paths`, or undefined. Its entry.json is written by whoever shares the volume: a
 * stored file goes only to one of the paths asked for, and what is read from the entry must be a regular file (a
 * symlink would be followed by the copy, a FIFO would block it forever).
 */
async function unrestorable(entry: Entry, paths: string[]): Promise<string | undefined> {
  const asked = new Set(paths.map((p) => resolve(p)));
  const stored = entry.format === 'files' ? (entry.files ?? []) : [{ name: ARCHIVE, path: undefined }];
  // Stored names are checked, but a symlink in place of the dir holding them would still lead out of the entry.
  if (
    entry.format === 'files' &&
    !(await lstat(join(entry.dir, FILES)).catch(() => undefined))?.isDirectory()
  ) {
    return `holds no directory ${FILES} of its own (a symlink?)`;
  }
  for (const file of stored) {
    if (file.path !== undefined && !asked.has(file.path)) {
      return `would write ${JSON.stringify(file.path)}, which is not one of the paths asked for`;
    }
    const info = await lstat(join(entry.dir, file.name)).catch(() => undefined);
    if (!info?.isFile()) return `holds no regular file ${file.name}`;
  }
  return undefined;
}

/** What about the entry's stored files differs from what its save recorded, or undefined. */
async function changedSinceSaved(entry: Entry): Promise<string | undefined> {
  for (const file of entry.format === 'files' ? (entry.files ?? []) : []) {
    const info = await lstat(join(entry.dir, file.name));
    if (info.size !== file.size) return `${file.name} is ${info.size} bytes, not ${file.size},`;
    if (file.mtimeMs !== undefined && info.mtimeMs !== file.mtimeMs) return `${file.name} was written`;
  }
  return undefined;
}

/** What a restore's temp beside its target is named: `<target>.ici-<8 hex>`, with `.owner` beside it. */
const TEMP_MARK = '.ici-';
const TEMP_NAME = /^[0-9a-f]{8}(\.owner)?$/;

/** A stored file is not one to restore (the entry was checked, and another job changed it since). */
class StoredFileRefused extends Error {}

interface OwnDir {
  /** Names the dir opened: on Linux /proc/self/fd/<n>, elsewhere its path. */
  path: string;
  close(): Promise<void>;
}

/**
 * `base/<names...>`, each component a directory of its own (made where missing when `create`), opened without
 * following a link. Another job sharing the volume may swap any of them for a symlink at any moment, also after
 * a check: on Linux the path answered, /proc/self/fd/<n>, stays the dir opened whatever happens to the names.
 * Throws naming the component that is not a directory (a symlink, a file) or is missing.
 */
async function openOwnDir(base: string, names: string[], create = false): Promise<OwnDir> {
  const flags = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
  let at = base;
  let shown = base;
  let handle: FileHandle | undefined;
  try {
    for (const name of names) {
      shown = join(shown, name);
      if (create) {
        await mkdir(join(at, name)).catch((error: NodeJS.ErrnoException) => {
          if (error.code !== 'EEXIST') throw error;
        });
      }
      const next = await open(join(at, name), flags).catch((error: NodeJS.ErrnoException) => {
        throw new OwnDirMissing(`${shown} is not a directory of its own (${error.code ?? error.message})`);
      });
      await handle?.close();
      handle = next;
      const opened = `/proc/self/fd/${handle.fd}`;
      at = existsSync(opened) ? opened : shown;
    }
  } catch (error) {
    await handle?.close();
    throw error;
  }
  const held = handle;
  return { path: at, close: async () => held?.close() };
}

class OwnDirMissing extends Error {}

/**
 * Puts the stored file `name` (`files/<n>`) from the files dir `files` (openOwnDir) at `target` in one rename (a
 * reader of `target` sees the old file or the new one). A hard link only for read-only use: it shares the entry's
 * bytes; else a reflink, which shares them copy-on-write.
 *
 * Another job may swap the stored file for a symlink after the entry was checked: it is opened once, without
 * following a link or blocking, and what is placed must be that very file. A hard link is checked to be it (link()
 * makes a second name for a symlink rather than follow it); a copy reads it through /proc/self/fd where there is one.
 */
async function placeFile(files: string, name: string, target: string, readOnly: boolean): Promise<string> {
  const source = join(files, basename(name));
  const stored = await open(source, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK).catch(
    (error: NodeJS.ErrnoException) => {
      throw error.code === 'ELOOP'
        ? new StoredFileRefused(`${name} is not a regular file (a symlink)`)
        : error;
    },
  );
  try {
    const held = await stored.stat();
    if (!held.isFile()) throw new StoredFileRefused(`${name} is not a regular file`);
    const procPath = `/proc/self/fd/${stored.fd}`;
    return await placeHeld(existsSync(procPath) ? procPath : source, source, held, target, readOnly);
  } finally {
    await stored.close();
  }
}

async function placeHeld(
  from: string,
  source: string,
  held: { dev: number; ino: number },
  target: string,
  readOnly: boolean,
): Promise<string> {
  await mkdir(dirname(target), { recursive: true });
  await removeStaleTempsBeside(target);
  const temp = `${target}${TEMP_MARK}${randomBytes(4).toString('hex')}`;
  // Recorded before the temp exists and removed after it is gone: a restore killed at any point (a cancelled
  // job; a copy of a GiB disk takes seconds) leaves a temp the next restore of this target can tell from a live one.
  const owner = `${temp}${OWNER_SUFFIX}`;
  await writeFile(owner, JSON.stringify(ownerRecord('restore')), { flag: 'wx' });
  try {
    let linked =
      readOnly &&
      (await link(source, temp).then(
        () => true,
        () => false,
      ));
    if (linked) {
      const placed = await lstat(temp);
      if (placed.ino !== held.ino || placed.dev !== held.dev) {
        await rm(temp, { force: true });
        linked = false;
      }
    }
    let how = 'a hard link';
    if (!linked) {
      how = await copyFile(from, temp, constants.COPYFILE_FICLONE_FORCE).then(
        () => 'a reflink',
        async () => {
          await copyFile(from, temp);
          return 'a copy';
        },
      );
      // The entry's files are read-only; a copy belongs to the caller.
      await chmod(temp, 0o644);
    }
    await rename(temp, target);
    // rename() between two links of one file does nothing (POSIX): restoring a hard link over the same hard link
    // (a second restore of the entry) would leave the temp name behind.
    await rm(temp, { force: true });
    return how;
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  } finally {
    await rm(owner, { force: true });
  }
}

/**
 * Removes the temps a killed restore left beside `target`: those whose owner no longer runs (or, left by a
 * version that recorded no owner, whose link or copy is a day old). Best effort: what it cannot judge or remove
 * stays, and the restore goes on.
 */
async function removeStaleTempsBeside(target: string): Promise<void> {
  const dir = dirname(target);
  const prefix = `${basename(target)}${TEMP_MARK}`;
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names) {
    if (!name.startsWith(prefix) || !TEMP_NAME.test(name.slice(prefix.length))) continue;
    const temp = join(dir, name.endsWith(OWNER_SUFFIX) ? name.slice(0, -OWNER_SUFFIX.length) : name);
    try {
      const owner = await judgeOwnerFile(`${temp}${OWNER_SUFFIX}`, STALE_TEMP_MS);
      if (owner && !owner.stale) continue;
      if (!owner) {
        // ctime: a hard link keeps the entry's old mtime, but linking it changed the inode.
        const info = await lstat(temp).catch(() => undefined);
        if (info && Date.now() - info.ctimeMs <= STALE_TEMP_MS) continue;
      }
      await rm(temp, { force: true });
      await rm(`${temp}${OWNER_SUFFIX}`, { force: true });
    } catch {
      // a name we cannot judge or remove (a directory, no permission) is not ours to force
    }
  }
}

async function fsyncFile(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Removes what killed saves and evictions left in the volume's tmp dir, working in the dir opened (openOwnDir):
 * swapped for a symlink after volumeTmp() looked at it, names read from the real dir would otherwise be removed
 * wherever the link leads.
 */
async function removeStaleTemps(root: string): Promise<void> {
  const tmp = await openOwnDir(root, ['tmp']);
  try {
    await sweepTemps(tmp.path);
  } finally {
    await tmp.close();
  }
}

async function sweepTemps(tmpRoot: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(tmpRoot);
  } catch {
    return;
  }
  for (const name of names) {
    const path = join(tmpRoot, name);
    if (name.endsWith(OWNER_SUFFIX)) {
      const owner = await judgeOwnerFile(path, STALE_TEMP_MS).catch(() => undefined);
      if (!owner?.stale) continue;
      await rm(path.slice(0, -OWNER_SUFFIX.length), { recursive: true, force: true });
      await rm(path, { force: true });
    } else if (!names.includes(`${name}${OWNER_SUFFIX}`)) {
      // Left by a version that recorded no owner: judged by its age alone.
      const info = await stat(path).catch(() => undefined);
      if (info && Date.now() - info.mtimeMs > STALE_TEMP_MS) await rm(path, { recursive: true, force: true });
    }
  }
}

/**
 * The volume's tmp dir, made when missing. Whoever shares the volume could put a symlink there instead, and the
 * sweep of stale temps would then remove every day-old file in the dir it leads to (a home, a workspace): only a
 * directory of its own is used.
 */
async function volumeTmp(root: string): Promise<string> {
  const tmp = join(root, 'tmp');
  await mkdir(tmp, { recursive: true });
  if (!(await lstat(tmp)).isDirectory()) {
    throw new Error(`${tmp} is not a directory (a symlink?): the cache leaves it and what it leads to alone`);
  }
  return tmp;
}

/**
 * A fresh path in tmp, its owner recorded beside it before anything is made there: whatever a kill leaves, the
 * next save tells it from a live job's work. `done` removes both, the owner last.
 */
async function claimTemp(root: string, prefix = ''): Promise<{ path: string; done(): Promise<void> }> {
  const path = join(await volumeTmp(root), `${prefix}${randomBytes(8).toString('hex')}`);
  const owner = `${path}${OWNER_SUFFIX}`;
  await writeFile(owner, JSON.stringify(ownerRecord('cache dir')), { flag: 'wx' }).catch(async (error) => {
    // Made but not written (a full volume): empty, it would stay in tmp until the sweep judges it by its age.
    await rm(owner, { force: true });
    throw error;
  });
  return {
    path,
    done: async () => {
      await rm(path, { recursive: true, force: true });
      await rm(owner, { force: true });
    },
  };
}

/** Regular files are stored as they are; anything else (a directory, a mix) as one zstd tar. */
async function allRegularFiles(paths: string[]): Promise<boolean> {
  for (const p of paths) {
    const info = await lstat(p);
    if (!info.isFile()) return false;
  }
  return paths.length > 0;
}

async function writeFiles(temp: string, present: string[]): Promise<StoredFile[]> {
  await mkdir(join(temp, FILES));
  const files: StoredFile[] = [];
  for (const [i, path] of present.entries()) {
    const name = `${FILES}/${i}`;
    // A reflink where the volume shares the filesystem and supports it, else a copy: the caller's file may
    // change later, the entry must not.
    await copyFile(path, join(temp, name), constants.COPYFILE_FICLONE);
    await chmod(join(temp, name), 0o444);
    await fsyncFile(join(temp, name));
    const stored = await stat(join(temp, name));
    files.push({ path, name, size: stored.size, mtimeMs: stored.mtimeMs });
  }
  return files;
}

export async function saveToDirCache(
  host: Host,
  root: string,
  paths: string[],
  key: string,
): Promise<SaveResult> {
  const budget = cacheDirSizeBudget();
  const version = dirCacheVersion(paths);
  const target = entryDir(root, version, key);
  if (existsSync(target)) return { outcome: 'exists', message: `entry already present in ${root}` };

  const present = paths.map((p) => resolve(p)).filter((p) => existsSync(p));
  const started = Date.now();
  await volumeTmp(root);
  await removeStaleTemps(root);
  // A volume already over its budget (lowered, or every entry in use at the last eviction) is brought under it
  // first: on a full disk this save would fail, and every later one, before any eviction ran.
  if (budget !== undefined) await evict(host, root, { budget, usedBefore: started, quiet: true });
  let result: SaveResult;
  try {
    result = await publishEntry(host, root, version, paths, present, key);
  } catch (error) {
    // A budget larger than the disk, or other data on it: what this save needs is freed, and it is tried once
    // more. Without a budget the cache keeps everything, as asked.
    if (budget === undefined || !outOfSpace(error)) throw error;
    const bytes = await bytesToSave(present, await allRegularFiles(present));
    // statfs shows the bytes free to everyone: a write refused by a quota (EDQUOT), or for want of inodes
    // (ENOSPC), still finds them "free". The room this save takes is then freed in entries, which hold both.
    const short = bytes - (await freeBytes(root));
    const needed = short > 0 ? short : bytes;
    const freed = await evict(host, root, {
      budget,
      usedBefore: started,
      bytesToFree: needed,
      quiet: true,
    });
    if (freed === 0 || freed < needed) {
      host.info(
        `Cache dir: no room made for ${printable(key)}: the entries left are in use, saved or restored since this save began, or linked from elsewhere too (a workspace on the volume's filesystem)`,
      );
      throw error;
    }
    host.info(`Cache dir: trying ${printable(key)} once more, now that it fits (it ran out of space)`);
    result = await publishEntry(host, root, version, paths, present, key);
  }
  if (result.outcome === 'saved' && budget !== undefined) {
    await evict(host, root, { budget, keep: target, usedBefore: Infinity });
  }
  return result;
}

/** Writes the entry in tmp and publishes it under its key; what it left in tmp is removed whatever happens. */
async function publishEntry(
  host: Host,
  root: string,
  version: string,
  paths: string[],
  present: string[],
  key: string,
): Promise<SaveResult> {
  const target = entryDir(root, version, key);
  const claimed = await claimTemp(root);
  const temp = claimed.path;
  try {
    await mkdir(join(temp, READERS), { recursive: true });
    let meta: EntryMeta;
    if (await allRegularFiles(present)) {
      const files = await writeFiles(temp, present);
      const sizeBytes = files.reduce((sum, f) => sum + f.size, 0);
      meta = { key, version, paths, sizeBytes, createdAt: Date.now(), format: 'files', files };
    } else {
      const archive = join(temp, ARCHIVE);
      await exec(
        'tar',
        ['-c', '-P', '--posix', '-f', archive, '--use-compress-program', 'zstdmt', '--', ...present],
        { timeoutMs: cacheCallTimeoutMs() },
      );
      await fsyncFile(archive);
      meta = {
        key,
        version,
        paths,
        sizeBytes: (await stat(archive)).size,
        createdAt: Date.now(),
        format: 'tar',
      };
    }
    await writeFile(join(temp, USED), '');
    await writeFileAtomic(join(temp, META), `${JSON.stringify(meta, null, 2)}\n`);
    // Published into the version dir as opened (and made): through a symlink in place of entries/ or
    // entries/<version>, the entry (the job's files) would be written wherever that leads.
    const entries = await openOwnDir(root, ['entries', version], true);
    try {
      try {
        await rename(temp, join(entries.path, basename(target)));
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if (code === 'ENOTEMPTY' || code === 'EEXIST') {
          return { outcome: 'exists', message: `another writer published ${key} first` };
        }
        throw error;
      }
      await fsyncDir(entries.path);
    } finally {
      await entries.close();
    }
    host.debug(`published ${target}`);
    const how = meta.format === 'files' ? `${meta.files!.length} file(s) as they are` : 'a zstd tar';
    return { outcome: 'saved', message: `${formatBytes(meta.sizeBytes)} in ${root}, ${how}` };
  } finally {
    await claimed.done();
  }
}

/** A write that failed for lack of room: node's own errors carry the code, tar's and zstd's only their message. */
function outOfSpace(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return (
    code === 'ENOSPC' ||
    code === 'EDQUOT' ||
    /No space left on device|Disk quota exceeded/i.test(errorMessage(error))
  );
}

/**
 * At most what saving `paths` takes on the volume, counted as evict() counts entries: stored as they are, the
 * files' bytes; as an archive, also a tar header and its padding for each member (zstd shrinks an archive, or
 * grows it by a few bytes per block). Headers counted for stored files would evict one entry too many.
 */
async function bytesToSave(paths: string[], asFiles: boolean): Promise<number> {
  let total = 0;
  // tar stores a file's content once, its other links as headers, and zstd makes next to nothing of a sparse
  // file's holes: counted per link and by apparent size, a tree of three links to a 2 MiB file asked for 6, a
  // sparse 64 MiB one for 64, and the retry evicted everything, then gave up. Stored files are copied whole, per
  // path.
  const seen = new Set<string>();
  const walk = async (path: string): Promise<void> => {
    const info = await lstat(path).catch(() => undefined);
    if (!info) return;
    const inode = `${info.dev}:${info.ino}`;
    const repeat = !asFiles && info.nlink > 1 && seen.has(inode);
    if (info.isFile()) seen.add(inode);
    const content = asFiles ? info.size : Math.min(info.size, info.blocks * 512);
    total += (asFiles ? 0 : 1024) + (info.isFile() && !repeat ? content : 0);
    if (!info.isDirectory()) return;
    for (const name of await readdir(path).catch(() => [] as string[])) await walk(join(path, name));
  };
  for (const path of paths) await walk(path);
  return total;
}

async function freeBytes(dir: string): Promise<number> {
  const fs = await statfs(dir);
  return fs.bavail * fs.bsize;
}

/**
 * The size budget from IMAGE_CI_CACHE_DIR_MAX_SIZE, undefined (no eviction) when unset. A value that is not a
 * size with a unit is a mistake in the workflow: `20` could mean 20 GB as well as the 20 bytes it would be.
 */
export function cacheDirSizeBudget(env: NodeJS.ProcessEnv = process.env): number | undefined {
  return readSizeEnv(CACHE_DIR_MAX_SIZE_ENV, env);
}

/**
 * The room an entry's stored files take, counted in place of the size its entry.json states: that file is written
 * by whoever shares the volume, and an entry kept by a recent `used` that claimed 1e300 bytes, or stored a sparse
 * file of a TiB, would have every save evict every other entry. A sparse file counts its allocated blocks.
 * `frees` leaves out files with another link (a read-only restore's, in a workspace on the volume's filesystem):
 * their blocks stay when the entry goes.
 */
async function roomTaken(entry: Entry): Promise<{ room: number; frees: number }> {
  const names = entry.format === 'files' ? new Set((entry.files ?? []).map((f) => f.name)) : [ARCHIVE];
  let room = 0;
  let frees = 0;
  for (const name of names) {
    const info = await lstat(join(entry.dir, name)).catch(() => undefined);
    if (!info) continue;
    const bytes = Math.min(info.size, info.blocks * 512);
    room += bytes;
    if (info.nlink === 1) frees += bytes;
  }
  return { room, frees };
}

type CountedEntry = Entry & { lastUsed: number; frees: number };

async function allEntries(root: string): Promise<CountedEntry[]> {
  const versions = await readdir(join(root, 'entries')).catch(() => [] as string[]);
  const entries: CountedEntry[] = [];
  for (const version of versions) {
    for (const entry of await readEntries(root, version)) {
      const used = await lstat(join(entry.dir, USED)).catch(() => undefined);
      const { room, frees } = await roomTaken(entry);
      entries.push({ ...entry, sizeBytes: room, frees, lastUsed: used?.mtimeMs ?? entry.createdAt });
    }
  }
  return entries;
}

/**
 * Removes an entry under its eviction lock (see registerReader): 'busy' when another job holds that lock or the
 * entry is gone, its live readers when a restore reads it. It is moved into tmp first, so nobody finds half a
 * deleted entry.
 */
async function removeEntry(root: string, entry: Entry): Promise<'removed' | 'busy' | LockOwner[]> {
  let lock: Lock;
  try {
    lock = await acquireLock(join(entry.dir, EVICTING), {
      timeoutMs: 0,
      staleMs: STALE_EVICTING_MS,
      purpose: 'cache dir eviction',
    });
  } catch {
    return 'busy';
  }
  const readers = await liveReaders(entry.dir);
  if (readers.length > 0) {
    await lock.release();
    return readers;
  }
  const aside = await claimTemp(root, 'evict-').catch(async (error: unknown) => {
    // Held on, the lock would make every restore of the entry a miss for a minute.
    await lock.release();
    throw error;
  });
  try {
    await rename(entry.dir, aside.path);
  } catch {
    await lock.release();
    return 'busy';
  } finally {
    await aside.done();
  }
  return 'removed';
}

interface Eviction {
  budget: number;
  /** Bytes to free on top of the budget: what a save that ran out of space needs. */
  bytesToFree?: number;
  /** The entry just saved: it stays, and so does every entry saved or restored since (see below). */
  keep?: string;
  /** Without `keep`: entries used at or after this time stay (another job's, since this save started). */
  usedBefore: number;
  /** No lines about entries kept (in use, or the budget still not met): the save's last eviction says them. */
  quiet?: boolean;
}

/**
 * Keeps the cache under its budget (and frees `bytesToFree`): least recently restored entries go first; the
 * entry just saved and every entry a restore is reading stay (removeEntry), and so does every entry saved or
 * restored since the one just saved: another job published it meanwhile, and its own eviction (which keeps it)
 * is the one to decide between the two. Were the older save to evict it, each of two jobs saving at once could
 * evict the other's entry. Answers the bytes that left the disk (a stored file linked elsewhere takes none away).
 */
async function evict(host: Host, root: string, how: Eviction): Promise<number> {
  const { budget, bytesToFree = 0, keep } = how;
  const entries = await allEntries(root);
  let total = entries.reduce((sum, e) => sum + e.sizeBytes, 0);
  let freed = 0;
  const over = () => `${formatBytes(total)} > ${CACHE_DIR_MAX_SIZE_ENV}=${formatBytes(budget)}`;
  const why = () =>
    total > budget
      ? over()
      : `the volume is out of space, a save needs ${formatBytes(bytesToFree - freed)} more`;
  const usedBefore = entries.find((e) => e.dir === keep)?.lastUsed ?? how.usedBefore;
  for (const entry of entries.sort((a, b) => a.lastUsed - b.lastUsed)) {
    if (total <= budget && freed >= bytesToFree) return freed;
    if (entry.dir === keep) continue;
    if (entry.lastUsed >= usedBefore) break;
    // Only room is wanted (the budget is kept): an entry whose blocks would stay is not lost for nothing.
    if (total <= budget && entry.frees === 0) continue;
    const removed = await removeEntry(root, entry);
    if (removed === 'busy') continue; // another job is evicting it, or has evicted it meanwhile
    if (removed !== 'removed') {
      if (how.quiet) continue;
      host.info(
        `Cache dir: not evicting ${printable(entry.key)}, being restored by pid ${removed[0]!.pid} on ${printable(removed[0]!.host)}`,
      );
      continue;
    }
    host.info(
      `Cache dir: evicted ${printable(entry.key)} (${formatBytes(entry.sizeBytes)}, last restored ${new Date(entry.lastUsed).toISOString()}): ${why()}`,
    );
    total -= entry.sizeBytes;
    freed += entry.frees;
  }
  if (total > budget && !how.quiet) {
    host.info(`Cache dir: still ${over()}; only entries in use, just saved or used since are left.`);
  }
  return freed;
}
