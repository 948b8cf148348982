import { isUtf8 } from 'node:buffer';
import type { Stats } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Called for an entry whose name is no UTF-8, with its path as bytes (for fs calls) and as text (for messages; its
 * odd bytes shown as U+FFFD), instead of visiting it or anything below it.
 */
export type ForeignName = (raw: Buffer, shown: string) => Promise<void>;

/**
 * Called for an entry whose path from `root` would not fit PATH_MAX, instead of visiting it or anything below it:
 * `dir` (which fits) holds it as `name`.
 */
export type TooDeep = (dir: string, name: string, shown: string) => Promise<void>;

/** Linux's PATH_MAX, its NUL included (the service runs on Linux only): fs calls fail on longer paths. */
const PATH_MAX = 4096;

/**
 * Calls `visit` for everything below `root`, in name order, a directory before what it holds, following no
 * symlink (node 20's recursive readdir follows symlinks to directories, out of the tree and round loops).
 * Names are read as bytes: as text, a name that is no UTF-8 comes back with U+FFFD for its odd bytes, equal to
 * another such name or to one really holding U+FFFD, and a lookup by that text finds another file or none. Such
 * an entry goes to `foreign`; without it, the walk fails naming it. A build can nest dirs deeper than any path
 * can name (tar and `rm -r` go by descriptors, Node only by paths): such an entry goes to `tooDeep`; without it,
 * the walk fails with ENAMETOOLONG.
 */
export async function walk(
  root: string,
  rel: string,
  visit: (path: string, info: Stats) => Promise<void>,
  foreign?: ForeignName,
  tooDeep?: TooDeep,
): Promise<void> {
  let raw: Buffer[];
  try {
    raw = await readdir(join(root, rel), { encoding: 'buffer' });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  const names = raw.filter((name) => isUtf8(name)).map((name) => name.toString('utf8'));
  for (const name of names.sort()) {
    const path = join(rel, name);
    if (tooDeep && Buffer.byteLength(join(root, path)) >= PATH_MAX) {
      // Thousands of characters: its end says enough in a log line.
      await tooDeep(join(root, rel), name, `…${path.slice(-200)}`);
      continue;
    }
    const info = await lstat(join(root, path));
    await visit(path, info);
    if (info.isDirectory()) await walk(root, path, visit, foreign, tooDeep);
  }
  for (const name of raw.filter((n) => !isUtf8(n))) {
    const shown = join(rel, name.toString('utf8'));
    if (!foreign) throw new Error(`${shown} is named in bytes that are no UTF-8`);
    await foreign(Buffer.concat([Buffer.from(`${join(root, rel)}/`), name]), shown);
  }
}
