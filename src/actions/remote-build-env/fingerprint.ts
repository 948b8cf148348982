/**
 * The cache-mount dir as post finds it after the builds: a cheap "did this directory change" check (names,
 * types, modes, sizes, mtimes and link targets, not contents: any build step that writes into a cache mount
 * changes at least one of them, and reading metadata stays fast for caches of many gigabytes), and the removal of
 * what a build left there that no restore would take; and, on restore, what an entry must not bring along.
 */
import { isUtf8 } from 'node:buffer';
import { createHash } from 'node:crypto';
import { chmod, readlink, realpath, rm, symlink } from 'node:fs/promises';
import { isAbsolute, join, sep } from 'node:path';
import { exec } from '../../core/exec.js';
import { OWNERS_FILE, type Owners } from './owners.js';
import { walk } from './tree.js';

/**
 * Hex digest of the tree's metadata; a missing or empty directory gives the digest of nothing. With `owners`
 * (a rootless tree, owners.ts) the recorded owners and modes count instead of those on disk, which are the
 * runner's user's and widened (and, after a restore, narrowed by tar's umask); the manifest itself never counts.
 */
export async function fingerprintDir(dir: string, owners?: Owners): Promise<string> {
  const hash = createHash('sha256');
  await walk(dir, '', async (path, info) => {
    if (path === OWNERS_FILE) return;
    const target = info.isSymbolicLink() ? await readlink(join(dir, path)) : '';
    const owner = owners?.get(path);
    const mode = owner ? `${info.mode & 0o170000}:${owner.mode}:${owner.uid}:${owner.gid}` : info.mode;
    hash.update(`${path}\0${mode}\0${info.size}\0${info.mtimeMs}\0${target}\n`);
  });
  return hash.digest('hex');
}

/** A build may leave many files below a too-deep dir. */
const REMOVE_TIMEOUT_MS = 60_000;

export const EMPTY_FINGERPRINT = createHash('sha256').digest('hex');

/**
 * Makes the tree one a restore takes (cache-confinement.ts refuses a whole entry for one FIFO, device node, hard
 * link to a symlink or name that is no UTF-8, and would then refuse every later save of it too): FIFOs, sockets
 * and device nodes (a build's leftovers, worth nothing in a later run), and entries named, or symlinks pointing,
 * in bytes that are no UTF-8, or at paths longer than PATH_MAX (which tar saves, but no walk here could check on
 * restore), are removed, and a symlink with more than one name gets a fresh inode per name.
 * Returns the paths removed, relative to `dir` (a name that is no UTF-8 with U+FFFD for its odd bytes).
 */
export async function removeUnrestorable(dir: string): Promise<string[]> {
  const removed: string[] = [];
  await walk(
    dir,
    '',
    async (path, info) => {
      const full = join(dir, path);
      if (info.isSymbolicLink()) {
        const target = await readlink(full, { encoding: 'buffer' });
        if (!isUtf8(target)) {
          await rm(full);
          removed.push(path);
        } else if (info.nlink > 1) {
          await rm(full);
          await symlink(target, full);
        }
      } else if (!info.isFile() && !info.isDirectory()) {
        await rm(full);
        removed.push(path);
      }
    },
    async (raw, shown) => {
      await rm(raw, { recursive: true, force: true });
      removed.push(shown);
    },
    async (parent, name, shown) => {
      // Node cannot name it; rm(1) reached from its dir can, and goes below it by descriptors.
      await exec('rm', ['-rf', '--', name], { cwd: parent, timeoutMs: REMOVE_TIMEOUT_MS });
      removed.push(shown);
    },
  );
  return removed;
}

export interface Confined {
  /** Symlinks removed, relative to the dir. */
  linksOut: string[];
  /** Files whose setuid/setgid bits were cleared, relative to the dir. */
  setuid: string[];
}

/**
 * Makes a restored tree (anyone who can write the cache may have saved it) safe to hand to the service, in one
 * walk. Removes every symlink that, followed on this host, leads out of `dir` or nowhere: buildah follows
 * symlinks on the host when it looks up a cache mount's dir (`<cache-mount dir>/<id>`, the id being the target
 * path unless given), so a restored `root/.cache -> /` would mount the host's root into the build. An absolute
 * target goes too, even one into `dir`: the dir is moved before the service uses it. Links that stay inside
 * (`node_modules/.bin`) are kept. And clears setuid/setgid bits, which tar restores for root: a planted
 * setuid-root file would make root of a build step that dropped to another user.
 */
export async function confineRestored(dir: string): Promise<Confined> {
  const root = await realpath(dir);
  const confined: Confined = { linksOut: [], setuid: [] };
  await walk(dir, '', async (path, info) => {
    const full = join(dir, path);
    if (info.isFile() && info.mode & 0o6000) {
      await chmod(full, info.mode & 0o1777);
      confined.setuid.push(path);
    }
    if (!info.isSymbolicLink()) return;
    const target = await readlink(full);
    const resolved = isAbsolute(target) ? undefined : await realpath(full).catch(() => undefined);
    if (resolved === root || resolved?.startsWith(root + sep)) return;
    await rm(full);
    confined.linksOut.push(path);
  });
  return confined;
}
