import { constants } from 'node:fs';
import { lstat, open, readlink, realpath, stat, statfs, type FileHandle } from 'node:fs/promises';
import { sep } from 'node:path';
import { ActionError } from './run.js';
import { formatBytes } from './summary.js';

/** Whether anything (file, dir, socket) exists at `path`; unreadable parents count as absent. */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** The code of fileChunks' refusal of a FIFO or device: a local file problem, like node's ENOENT or EISDIR. */
export const NOT_A_REGULAR_FILE = 'ERR_NOT_A_REGULAR_FILE';
/** The code of readRegularFile's refusal of a file past its limit. */
export const FILE_TOO_LARGE = 'ERR_FILE_TOO_LARGE';
/** The code of openRegularFileWithin's refusal of a path that leads out of its directory. */
export const OUTSIDE_DIRECTORY = 'ERR_OUTSIDE_DIRECTORY';

/** Linux's O_PATH (node's fs.constants lacks it): a handle on the inode that opens nothing, so nothing acts. */
const O_PATH = 0o10000000;

/** An error naming the file (`shownAs` is how node's message names it), with node's code (ENOENT, EISDIR...). */
function namedError(path: string, shownAs = path): (error: NodeJS.ErrnoException) => Error {
  return (error) => {
    const message = `cannot read ${path}: ${error.message.replace(shownAs, path)}`;
    return Object.assign(new Error(message, { cause: error }), { code: error.code });
  };
}

function notRegular(path: string): Error {
  return Object.assign(new Error(`cannot read ${path}: not a regular file.`), { code: NOT_A_REGULAR_FILE });
}

/** `dir` must be a real path (no symlink in it): `real` is compared with it as text. */
function checkWithin(path: string, real: string, dir: string): void {
  if (real === dir || real.startsWith(dir.endsWith(sep) ? dir : dir + sep)) return;
  throw Object.assign(new Error(`cannot read ${path}: it leads out of ${dir}.`), { code: OUTSIDE_DIRECTORY });
}

/** Where /proc says the inode an open handle (`proc`, its /proc/self/fd link) holds is; undefined without /proc. */
function placeOf(path: string, proc: string): Promise<string | undefined> {
  return readlink(proc).catch((error: NodeJS.ErrnoException) =>
    error.code === 'ENOENT' ? undefined : Promise.reject(namedError(path, proc)(error)),
  );
}

/**
 * A FIFO or character device has no end a digest or a declared size could rely on (/dev/zero never ends), a
 * block device is a disk (an unused loop device reads as empty), a socket cannot be read as a file; a directory
 * goes on to fail its first read with EISDIR, as node words it.
 */
const readable = (info: { isFile(): boolean; isDirectory(): boolean }) => info.isFile() || info.isDirectory();

/**
 * `path` opened for reading, refused unopened when it is no regular file: opening a device can act (a tape
 * rewinds, /dev/watchdog arms the machine's watchdog, a FIFO's waiting writer is let through), and paths come
 * from layouts and repositories. On Linux the check and the open are on one inode (an O_PATH handle, checked,
 * then opened again through /proc/self/fd), so a FIFO renamed into place meanwhile is never opened. Elsewhere,
 * or without /proc, the path is checked, then opened and checked again: a FIFO renamed into place between the
 * two is opened once (non-blocking, so it holds no thread) and refused.
 */
async function openRegularFile(path: string, followLinks: boolean, within?: string): Promise<FileHandle> {
  const named = namedError(path);
  // Without following, a symlink at the path is itself what is checked (and refused), or fails to open (ELOOP).
  const noFollow = followLinks ? 0 : constants.O_NOFOLLOW;
  if (process.platform === 'linux') {
    const handle = await open(path, O_PATH | noFollow).catch((error: NodeJS.ErrnoException) =>
      Promise.reject(named(error)),
    );
    try {
      if (!readable(await handle.stat())) throw notRegular(path);
      const proc = `/proc/self/fd/${handle.fd}`;
      // Where the inode held open is, whatever links led there or were swapped since. Without /proc (a chroot,
      // a sandbox) neither this nor the reopening below can be done: the path is checked as elsewhere.
      if (within !== undefined) {
        const place = await placeOf(path, proc);
        if (place !== undefined) checkWithin(path, place, within);
      }
      const reopened = await open(proc, constants.O_RDONLY | constants.O_NONBLOCK).catch(
        (error: NodeJS.ErrnoException) =>
          error.code === 'ENOENT' ? undefined : Promise.reject(namedError(path, proc)(error)),
      );
      if (reopened) return reopened;
    } finally {
      await handle.close();
    }
  } else {
    const before = await (followLinks ? stat : lstat)(path).catch((error: NodeJS.ErrnoException) =>
      Promise.reject(named(error)),
    );
    if (!readable(before)) throw notRegular(path);
  }
  // Without /proc the path is resolved, then opened: a link swapped in between is not seen.
  if (within !== undefined) checkWithin(path, await realpath(path), within);
  // Non-blocking so that a FIFO put there since does not hold a thread until someone writes to it (regular
  // files ignore it). A socket cannot be opened at all (ENXIO): no regular file either, nothing to try again.
  const file = await open(path, constants.O_RDONLY | constants.O_NONBLOCK | noFollow).catch(
    (error: NodeJS.ErrnoException) =>
      Promise.reject(error.code === 'ENXIO' ? notRegular(path) : named(error)),
  );
  // Checked again on what was opened, in case the path changed since.
  const info = await file.stat().catch(async (error: NodeJS.ErrnoException) => {
    await file.close();
    throw named(error);
  });
  if (!readable(info)) {
    await file.close();
    throw notRegular(path);
  }
  return file;
}

/** What one read asks for: large reads mean fewer, bigger writes to a socket or pipe downstream. */
const FILE_CHUNK = 1024 * 1024;
const SMALL_CHUNK = 64 * 1024;

/**
 * The bytes [start, end) of a file (to its end without `end`), read into ONE buffer that every chunk reuses: a
 * chunk is valid only until the next one is asked for. A fresh buffer per read costs more than the read here:
 * hashing a 1 GiB file through createReadStream took 2.0 CPU-s (1.4 s), through one buffer 0.78 (0.77 s), as
 * every new buffer is memory the process has to fault in again.
 *
 * Every chunk but the last fills the buffer: a consumer that writes it to a socket (undici asks for the next
 * chunk only after 'drain' when write() returns false, as it does for anything above the socket's 16–64 KiB
 * high-water mark) is done with it before it is overwritten. A file that ends before `end` is an error: it
 * changed while being read. Only regular files are read. Errors name the file and keep node's code (ENOENT,
 * EISDIR...).
 */
export async function* fileChunks(
  path: string,
  start = 0,
  end = Infinity,
  chunkSize = FILE_CHUNK,
): AsyncGenerator<Buffer, void, undefined> {
  if (end <= start) return;
  yield* chunksOf(await openRegularFile(path, true), path, start, end, chunkSize);
}

/** fileChunks' reading of an opened file, which it closes. */
async function* chunksOf(
  file: FileHandle,
  path: string,
  start: number,
  end: number,
  chunkSize: number,
): AsyncGenerator<Buffer, void, undefined> {
  const named = namedError(path);
  try {
    // No larger than the file (the buffer of a 300-byte manifest read at once need not be 1 MiB), and never
    // small: /proc files say 0 bytes, and a file may grow while it is read.
    const { size } = await file.stat();
    const buffer = Buffer.allocUnsafeSlow(Math.min(chunkSize, end - start, Math.max(size + 1, SMALL_CHUNK)));
    for (let at = start; at < end;) {
      let filled = 0;
      while (filled < buffer.length && at + filled < end) {
        const want = Math.min(buffer.length - filled, end - at - filled);
        const { bytesRead } = await file
          .read(buffer, filled, want, at + filled)
          .catch((error: NodeJS.ErrnoException) => Promise.reject(named(error)));
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
      // A short fill is the file's end: the last chunk, so nothing reads into the buffer after it.
      const ended = filled < buffer.length && at + filled < end;
      if (ended && end !== Infinity) {
        throw new Error(
          `${path} ended at byte ${at + filled}, before byte ${end}: it changed while being read.`,
        );
      }
      if (filled > 0) yield buffer.subarray(0, filled);
      if (ended) return;
      at += filled;
    }
  } finally {
    await file.close();
  }
}

/**
 * `path` opened for reading as fileChunks opens it, refused (OUTSIDE_DIRECTORY) when the inode it leads to lies
 * outside `dir`, a real path: links are followed, but only to files of the same tree. On Linux the inode opened is
 * the one checked, so a file swapped for a link to /etc/shadow after the caller looked is never read.
 */
export function openRegularFileWithin(dir: string, path: string): Promise<FileHandle> {
  return openRegularFile(path, true, dir);
}

/** The chunks of a file opened by openRegularFileWithin, as fileChunks gives them; closes it. */
export function handleChunks(file: FileHandle, path: string): AsyncGenerator<Buffer, void, undefined> {
  return chunksOf(file, path, 0, Infinity, FILE_CHUNK);
}

/**
 * A small file (a manifest, an index.json) read whole, refused past `limit` bytes as a file that cannot be meant
 * (a layout's blob linked to a disk image) rather than buffered. Refuses what fileChunks refuses, and with
 * `followLinks: false` a symlink at the path too (files in a volume other jobs write).
 */
export async function readRegularFile(
  path: string,
  limit: number,
  { followLinks = true }: { followLinks?: boolean } = {},
): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  const file = await openRegularFile(path, followLinks);
  for await (const chunk of chunksOf(file, path, 0, Infinity, FILE_CHUNK)) {
    size += chunk.length;
    if (size > limit) {
      throw Object.assign(new Error(`cannot read ${path}: it is larger than ${limit} bytes.`), {
        code: FILE_TOO_LARGE,
      });
    }
    // The chunk's buffer is read into again for the next one.
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks);
}

/**
 * Refuses up front what cannot fit in `dir`, instead of filling the disk and failing half-way with ENOSPC. `what`
 * names the thing in the message (`GET blob … : the blob`).
 */
export async function ensureRoom(dir: string, size: number, what: string): Promise<void> {
  const stats = await statfs(dir);
  const free = stats.bavail * stats.bsize;
  if (size > free) {
    throw new ActionError(
      `${what} is ${formatBytes(size)} (${size} bytes) but ${dir} has only ` +
        `${formatBytes(free)} (${free} bytes) free.`,
    );
  }
}
