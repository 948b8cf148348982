/**
 * Undoing a failed extraction of a cache archive, for both backends: a cache path is restored whole or not at all,
 * never left with the members tar wrote before a refused member, a damaged byte or a full disk (a truncated file
 * that looks restored).
 */
import { chmod, lstat, readdir, rmdir, unlink } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { TarMember } from './tar-members.js';

/** The one clause the warning gets for what the undo could not remove. */
export function leftovers(paths: string[]): string {
  if (paths.length === 0) return '';
  const more = paths.length > 5 ? ` and ${paths.length - 5} more` : '';
  return `; could not remove ${paths.slice(0, 5).join(', ')}${more}`;
}

/** Errors that mean the path is already gone or was never ours to remove (a directory holding other files). */
const NOTHING_TO_UNDO = new Set(['ENOENT', 'ENOTEMPTY', 'EEXIST', 'ENOTDIR', 'EISDIR']);

/**
 * Removes what a failed extraction wrote: the cache paths that did not exist before, then every member the tar
 * stream announced (newest first, so directories are emptied before their removal is tried; a directory that
 * still holds something that was not ours stays). The archive's own directories may have any mode (000 keeps a
 * non-root runner out of them): each is opened to its owner first. Never throws; answers what stayed.
 */
export async function undoExtraction(
  workspace: string,
  members: readonly TarMember[],
  absent: string[],
): Promise<string[]> {
  const left: string[] = [];
  const attempt = attempter(left, NOTHING_TO_UNDO);
  // Parents first (shorter paths), whatever order the archive gave them in: a locked parent hides its children.
  const dirs = members.filter((m) => m.type === 'dir').map((m) => resolve(workspace, m.name));
  for (const dir of dirs.sort((a, b) => a.length - b.length)) await openToOwner(dir);
  for (const path of absent) await removeTree(Buffer.from(path), attempt);
  for (const member of [...members].reverse()) {
    const path = resolve(workspace, member.name);
    await attempt(path, member.type === 'dir' ? rmdir(path) : unlink(path));
  }
  return left;
}

/**
 * `rm -rf path` that opens each directory to its owner on the way, for a restored path the caller refuses: an
 * archive's directory of mode 000 would stop a plain recursive rm of a non-root runner (EACCES). Never throws;
 * answers what stayed.
 */
export async function removeRestored(path: string): Promise<string[]> {
  const left: string[] = [];
  await removeTree(Buffer.from(path), attempter(left, new Set(['ENOENT'])));
  return left;
}

/** Runs a removal, adding to `left` what failed for another reason than one of `harmless` (error codes). */
function attempter(
  left: string[],
  harmless: ReadonlySet<string>,
): (path: string | Buffer, action: Promise<unknown>) => Promise<void> {
  return (path, action) =>
    action.then(
      () => undefined,
      (error: NodeJS.ErrnoException) => {
        if (!harmless.has(error.code ?? '')) left.push(`${path.toString()} (${error.code ?? error.message})`);
      },
    );
}

async function openToOwner(dir: string | Buffer): Promise<void> {
  const stats = await lstat(dir).catch(() => undefined);
  if (stats?.isDirectory()) await chmod(dir, (stats.mode & 0o7777) | 0o700).catch(() => undefined);
}

/** `rm -rf` that opens each directory to its owner on the way, byte-exact whatever the names. */
async function removeTree(
  path: Buffer,
  attempt: (path: Buffer, action: Promise<unknown>) => Promise<void>,
): Promise<void> {
  const stats = await lstat(path).catch(() => undefined);
  if (!stats?.isDirectory()) {
    if (stats) await attempt(path, unlink(path));
    return;
  }
  await openToOwner(path);
  let entries: Buffer[] = [];
  await attempt(
    path,
    readdir(path, { encoding: 'buffer' }).then((e) => (entries = e)),
  );
  for (const entry of entries) await removeTree(Buffer.concat([path, Buffer.from('/'), entry]), attempt);
  await attempt(path, rmdir(path));
}
