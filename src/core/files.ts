import { constants } from 'node:fs';
import { open, stat } from 'node:fs/promises';

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

/** What one read asks for: large reads mean fewer, bigger writes to a socket or pipe downstream. */
const FILE_CHUNK = 1024 * 1024;

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
  const named = (error: NodeJS.ErrnoException) =>
    Object.assign(new Error(`cannot read ${path}: ${error.message}`, { cause: error }), { code: error.code });
  const notRegular = () =>
    Object.assign(new Error(`cannot read ${path}: not a regular file.`), { code: NOT_A_REGULAR_FILE });
  // Refused before it is opened: opening a device can act (a tape rewinds, /dev/watchdog arms the machine's
  // watchdog, a FIFO's waiting writer is let through), and paths come from layouts and repositories.
  const before = await stat(path).catch((error: NodeJS.ErrnoException) => Promise.reject(named(error)));
  if (!before.isFile() && !before.isDirectory()) throw notRegular();
  // Non-blocking so that a FIFO put there since does not hold a thread until someone writes to it (regular
  // files ignore it). A socket cannot be opened at all (ENXIO): no regular file either, nothing to try again.
  const file = await open(path, constants.O_RDONLY | constants.O_NONBLOCK).catch(
    (error: NodeJS.ErrnoException) => Promise.reject(error.code === 'ENXIO' ? notRegular() : named(error)),
  );
  try {
    // Checked again on what was opened, in case the path changed since. A FIFO or character device has no end
    // a digest or a declared size could rely on (/dev/zero never ends), a block device is a disk (an unused
    // loop device reads as empty); a directory goes on to fail its first read with EISDIR, as node words it.
    const info = await file.stat();
    if (!info.isFile() && !info.isDirectory()) throw notRegular();
    const buffer = Buffer.allocUnsafeSlow(Math.min(chunkSize, end - start));
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
