/**
 * A cheap "did this directory change" check for the cache-mount dir: names, types, modes, sizes, mtimes and
 * link targets, not contents. Any build step that writes into a cache mount changes at least one of them, and
 * reading metadata stays fast for caches of many gigabytes.
 */
import { createHash } from 'node:crypto';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';

async function walk(root: string, rel: string, hash: ReturnType<typeof createHash>): Promise<void> {
  let names: string[];
  try {
    names = (await readdir(join(root, rel))).sort();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  for (const name of names) {
    const path = join(rel, name);
    const info = await lstat(join(root, path));
    const target = info.isSymbolicLink() ? await readlink(join(root, path)) : '';
    hash.update(`${path}\0${info.mode}\0${info.size}\0${info.mtimeMs}\0${target}\n`);
    if (info.isDirectory()) await walk(root, path, hash);
  }
}

/** Hex digest of the tree's metadata; a missing or empty directory gives the digest of nothing. */
export async function fingerprintDir(dir: string): Promise<string> {
  const hash = createHash('sha256');
  await walk(dir, '', hash);
  return hash.digest('hex');
}

export const EMPTY_FINGERPRINT = createHash('sha256').digest('hex');
