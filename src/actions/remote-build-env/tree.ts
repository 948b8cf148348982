import type { Stats } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Calls `visit` for everything below `root`, in name order, a directory before what it holds, following no
 * symlink (node 20's recursive readdir follows symlinks to directories, out of the tree and round loops).
 */
export async function walk(
  root: string,
  rel: string,
  visit: (path: string, info: Stats) => Promise<void>,
): Promise<void> {
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
    await visit(path, info);
    if (info.isDirectory()) await walk(root, path, visit);
  }
}
