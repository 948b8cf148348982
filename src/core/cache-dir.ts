/**
 * The directory cache backend, for CI systems that mount a persistent volume (the CLI's --cache-dir). Same
 * contract as the Actions cache: entries are versioned by the path strings, restored by exact key then by
 * newest prefix match of the key and restore keys, and the first writer of a key wins.
 *
 * Layout under the root:
 *   entries/<version>/<sha256(key)>/{entry.json, archive.tar.zst}   published entries, never modified
 *   tmp/<random>/                                                   entries being written
 * An entry is written in tmp, fsynced, then renamed into place in one step: readers never see half an entry,
 * a crash leaves only a stray tmp dir, and a rename onto an existing entry fails, so concurrent writers of one
 * key cannot clobber each other (the loser reports 'exists').
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { BackendRestore, RestoreOptions, SaveResult } from './cache.js';
import { fsyncDir, writeFileAtomic } from './atomic.js';
import { exec } from './exec.js';
import type { Host } from './host.js';
import { formatBytes } from './summary.js';

/** Archiving gigabytes (VM images, build caches) takes minutes, never hours. */
const TAR_TIMEOUT_MS = 60 * 60_000;
const ARCHIVE = 'archive.tar.zst';
const META = 'entry.json';
/** A tmp dir this old belongs to a writer that crashed (no save takes a day); it is removed by the next save. */
const STALE_TEMP_MS = 24 * 3_600_000;
/** Bumped if the archive format changes, so old entries are not misread. */
const FORMAT = 'ici-dir-1';

interface EntryMeta {
  key: string;
  version: string;
  paths: string[];
  sizeBytes: number;
  createdAt: number;
}

/** Like @actions/cache's version: a hash of the path strings exactly as given, plus the archive format. */
export function dirCacheVersion(paths: readonly string[]): string {
  return createHash('sha256')
    .update([...paths, 'zstd', FORMAT].join('|'))
    .digest('hex');
}

function entryDir(root: string, version: string, key: string): string {
  return join(root, 'entries', version, createHash('sha256').update(key).digest('hex'));
}

async function readEntries(root: string, version: string): Promise<Array<EntryMeta & { dir: string }>> {
  const versionDir = join(root, 'entries', version);
  let names: string[];
  try {
    names = await readdir(versionDir);
  } catch {
    return [];
  }
  const entries: Array<EntryMeta & { dir: string }> = [];
  for (const name of names) {
    const dir = join(versionDir, name);
    try {
      const meta = JSON.parse(await readFile(join(dir, META), 'utf8')) as EntryMeta;
      if (typeof meta.key === 'string' && typeof meta.createdAt === 'number') entries.push({ ...meta, dir });
    } catch {
      // not an entry (or damaged by hand): never matched
    }
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
  if (options.lookupOnly) return { matchedKey: entry.key };
  host.info(`Extracting ${formatBytes(entry.sizeBytes)} from ${entry.dir}`);
  await exec('tar', ['-x', '-P', '-f', join(entry.dir, ARCHIVE), '--use-compress-program', 'unzstd'], {
    timeoutMs: TAR_TIMEOUT_MS,
  });
  return { matchedKey: entry.key };
}

async function fsyncFile(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function removeStaleTemps(tmpRoot: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(tmpRoot);
  } catch {
    return;
  }
  for (const name of names) {
    const dir = join(tmpRoot, name);
    const info = await stat(dir).catch(() => undefined);
    if (info && Date.now() - info.mtimeMs > STALE_TEMP_MS) await rm(dir, { recursive: true, force: true });
  }
}

export async function saveToDirCache(
  host: Host,
  root: string,
  paths: string[],
  key: string,
): Promise<SaveResult> {
  const version = dirCacheVersion(paths);
  const target = entryDir(root, version, key);
  if (existsSync(target)) return { outcome: 'exists', message: `entry already present in ${root}` };

  const present = paths.map((p) => resolve(p)).filter((p) => existsSync(p));
  await removeStaleTemps(join(root, 'tmp'));
  const temp = join(root, 'tmp', randomBytes(8).toString('hex'));
  await mkdir(temp, { recursive: true });
  try {
    const archive = join(temp, ARCHIVE);
    await exec(
      'tar',
      ['-c', '-P', '--posix', '-f', archive, '--use-compress-program', 'zstdmt', '--', ...present],
      { timeoutMs: TAR_TIMEOUT_MS },
    );
    await fsyncFile(archive);
    const sizeBytes = (await stat(archive)).size;
    const meta: EntryMeta = { key, version, paths, sizeBytes, createdAt: Date.now() };
    await writeFileAtomic(join(temp, META), `${JSON.stringify(meta, null, 2)}\n`);
    await mkdir(join(root, 'entries', version), { recursive: true });
    try {
      await rename(temp, target);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOTEMPTY' || code === 'EEXIST') {
        return { outcome: 'exists', message: `another writer published ${key} first` };
      }
      throw error;
    }
    await fsyncDir(join(root, 'entries', version));
    host.debug(`published ${target}`);
    return { outcome: 'saved', message: `${formatBytes(sizeBytes)} in ${root}` };
  } finally {
    await rm(temp, { recursive: true, force: true });
  }
}
