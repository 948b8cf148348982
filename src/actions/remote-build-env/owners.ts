/**
 * Cache mounts of a ROOTLESS service. Its user namespace maps container uid 0 to the runner's user and the other
 * ids to the user's /etc/subuid range, so what a build writes into a cache mount as a non-root container user
 * belongs on the host to a subordinate uid, often with modes (0700, 0600) that shut the runner's user out: tar
 * could not read it to save it. And tar, restoring as the runner's user, gives every file to that user (container
 * root), so a build step running as `USER 1000` could no longer write its own cache dir.
 *
 * So before a save, post enters podman's user namespace (`podman unshare`, root there over every mapped id),
 * records each entry's owner and mode as the builds see them in a manifest saved with the entry (OWNERS_FILE, at
 * the top of the cache-mount dir, where buildah keeps only mount dirs), and gives everything to the runner's user
 * with owner read and write. A restore puts the recorded owners and modes back the same way, so an entry saved
 * rootless also restores right on a rootful runner (as root, directly). A rootful save needs no manifest: tar
 * running as root keeps owners and modes itself.
 */
import { lstat, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { readRegularFile } from '../../core/files.js';
import { execAsStorageRoot } from '../../core/podman.js';
import { walk } from './tree.js';

export const OWNERS_FILE = '.image-ci-owners.json';

/** Owner and mode of one entry as the builds see them (ids of the container, not of the host). */
export interface Owner {
  uid: number;
  gid: number;
  /** Permission bits (setuid/setgid never restored). */
  mode: number;
}

/** By path relative to the cache-mount dir. */
export type Owners = ReadonlyMap<string, Owner>;

/** Metadata only, but a cache may hold millions of files. */
const OWNERS_TIMEOUT_MS = 10 * 60_000;

/**
 * Runs as root of the user namespace (as root itself on a rootful runner), with the node running this action, so
 * it needs nothing installed, and touches nothing outside `dir` even while a local process swaps entries below it
 * for symlinks: each entry is pinned by an O_PATH descriptor opened without following it, owner and mode are set
 * on that very inode through /proc/self/fd (chmod would follow a symlink put there after a check), a directory is
 * entered through its descriptor, never by its name again, and a symlink is only ever lchown'd by its name in a
 * directory so pinned. `apply` touches only entries it finds there, whatever the manifest names. Linux only, as
 * the service is.
 * argv: `record <dir>` writes the manifest and hands the tree over; `apply <dir>` reads the manifest (checked by
 * the action first) from stdin.
 */
const SCRIPT = `'use strict';
const fs = require('node:fs');
const [op, dir] = process.argv.slice(1);
const skip = ${JSON.stringify(OWNERS_FILE)};
const O_PATH = 0o10000000;
const { O_RDONLY, O_DIRECTORY, O_NOFOLLOW } = fs.constants;
const { isUtf8 } = require('node:buffer');
const self = (fd) => '/proc/self/fd/' + fd;
const at = (dirFd, name) => Buffer.concat([Buffer.from(self(dirFd) + '/'), Buffer.from(name)]);
// Names as bytes: one that is no UTF-8 would read back as text with U+FFFD and be found under no name, so never
// handed over, and post could not remove it. Such an entry (and what is below it) has no path: it is handed over
// but not recorded (post leaves it out of the save).
function walk(dirFd, rel, visit) {
  for (const name of fs.readdirSync(self(dirFd), { encoding: 'buffer' }).sort(Buffer.compare)) {
    if (rel === '' && name.equals(Buffer.from(skip))) continue;
    let fd;
    try {
      fd = fs.openSync(at(dirFd, name), O_PATH | O_NOFOLLOW);
    } catch (error) {
      if (error.code === 'ENOENT') continue;
      throw error;
    }
    try {
      const info = fs.fstatSync(fd);
      const text = rel === null || !isUtf8(name) ? null : name.toString('utf8');
      const path = text === null ? null : rel ? rel + '/' + text : text;
      visit(path, info, (uid, gid, mode) => {
        if (info.isSymbolicLink()) return fs.lchownSync(at(dirFd, name), uid, gid);
        if (info.uid !== uid || info.gid !== gid) fs.chownSync(self(fd), uid, gid);
        fs.chmodSync(self(fd), mode);
      });
      if (info.isDirectory()) {
        const inner = fs.openSync(self(fd), O_RDONLY | O_DIRECTORY);
        try {
          walk(inner, path, visit);
        } finally {
          fs.closeSync(inner);
        }
      }
    } finally {
      fs.closeSync(fd);
    }
  }
}
const top = fs.openSync(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
if (op === 'record') {
  const entries = [];
  walk(top, '', (path, info, set) => {
    if (path !== null) entries.push([path, info.uid, info.gid, info.mode & 0o7777]);
    set(0, 0, (info.mode & 0o1777) | (info.isDirectory() ? 0o700 : 0o600));
  });
  // A build can reach the top (a cache mount with id=.) and put a symlink, FIFO or dir there by this name: written
  // through, it would overwrite what the link points at (as root of the namespace) or hang post.
  fs.rmSync(at(top, skip), { force: true, recursive: true });
  fs.writeFileSync(at(top, skip), JSON.stringify(entries), { flag: 'wx' });
} else if (op === 'apply') {
  const owners = new Map(JSON.parse(fs.readFileSync(0, 'utf8')).map((e) => [e[0], e]));
  walk(top, '', (path, info, set) => {
    const owner = owners.get(path);
    if (owner) set(owner[1], owner[2], owner[3] & 0o1777);
  });
} else {
  throw new Error('unknown operation ' + op);
}
`;

const MAX_ID = 0xfffffffe;

function isId(value: unknown): value is number {
  return Number.isInteger(value) && (value as number) >= 0 && (value as number) <= MAX_ID;
}

/** A manifest entry besides its path, at most: brackets, 3 commas, 2 ids of 10 digits, a mode of 4, a comma. */
const ENTRY_BYTES = 30;
/** Room for any small tree's manifest. */
const MANIFEST_FLOOR_BYTES = 1024 * 1024;

/**
 * The most a manifest of the tree below `dir` can hold (twice what listing each entry with the longest ids
 * takes): a larger one was not recorded from this tree, and parsing it could exhaust the heap and end the
 * process (a few hundred MB of JSON zstd-compresses to almost nothing in a cache entry).
 */
async function manifestLimit(dir: string): Promise<number> {
  let limit = MANIFEST_FLOOR_BYTES;
  await walk(dir, '', async (path) => {
    limit += 2 * (Buffer.byteLength(JSON.stringify(path)) + ENTRY_BYTES);
  });
  return limit;
}

/**
 * The manifest below `dir`, checked (anyone who can write the cache may have saved it); undefined when none.
 * Only a regular file of a size the tree accounts for is read: post's record writes nothing else. Its text
 * never reaches a message (JSON.parse quotes the text it stopped at).
 */
export async function readOwners(dir: string): Promise<Owners | undefined> {
  const manifest = join(dir, OWNERS_FILE);
  try {
    await lstat(manifest);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  const bytes = await readRegularFile(manifest, await manifestLimit(dir), { followLinks: false });
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new Error(`${OWNERS_FILE} holds no valid JSON`);
  }
  if (!Array.isArray(parsed)) throw new Error(`${OWNERS_FILE} holds no list`);
  const owners = new Map<string, Owner>();
  for (const entry of parsed as unknown[]) {
    const [path, uid, gid, mode] = Array.isArray(entry) ? (entry as unknown[]) : [];
    if (typeof path !== 'string' || !isId(uid) || !isId(gid) || !Number.isInteger(mode)) {
      throw new Error(`${OWNERS_FILE} holds a malformed entry`);
    }
    owners.set(path, { uid, gid, mode: (mode as number) & 0o1777 });
  }
  return owners;
}

/** Records owners and modes into the manifest and hands the tree to the runner's user (see the top of the file). */
export async function takeOwnership(dir: string): Promise<void> {
  await execAsStorageRoot(process.execPath, ['-e', SCRIPT, 'record', dir], {
    timeoutMs: OWNERS_TIMEOUT_MS,
  });
}

/** Gives the entries below `dir` the recorded owners and modes, and removes the manifest. */
export async function restoreOwners(dir: string, owners: Owners): Promise<void> {
  await rm(join(dir, OWNERS_FILE), { force: true });
  const entries = [...owners].map(([path, o]) => [path, o.uid, o.gid, o.mode]);
  await execAsStorageRoot(process.execPath, ['-e', SCRIPT, 'apply', dir], {
    timeoutMs: OWNERS_TIMEOUT_MS,
    input: JSON.stringify(entries),
  });
}
