/**
 * Carries a child's output into a destination through this process, showing every chunk to a check before it
 * goes on, in one reusable buffer.
 *
 * A child's stdout read the usual way allocates a fresh 64 KiB buffer per read. On a GiB stream (a cache
 * archive's tar stream between zstd and tar) that costs more CPU than zstd itself: reading `zstd -dc` of a 1 GiB
 * archive took 1.0–1.2 CPU-seconds that way on the 2-CPU VM, and 0.21–0.23 into one buffer (about 5,000 reads of
 * 200 KiB instead of 16,000 fresh buffers for the garbage collector). Node reads into a given buffer only from
 * a socket it connected itself (`onread`), so the child writes into a unix socket instead of a pipe. Its path
 * exists, in a private directory, only until the two ends are connected.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { finished, type Writable } from 'node:stream';

const BUFFER_BYTES = 1024 * 1024;
/**
 * The longest socket path: a unix socket address holds 108 bytes on Linux, 104 on macOS, with the final NUL.
 * libuv silently cuts a longer one, which would put the socket outside its private directory, to stay there.
 */
const MAX_SOCKET_PATH = process.platform === 'linux' ? 107 : 103;

/** Where each chunk read goes; set by `into` (the source stays paused until then). */
interface Reader {
  forward?: (chunk: Buffer) => void;
}

export class ChildOutputRelay {
  private constructor(
    /** Give this to the child as its stdout, then call `handedOver`. */
    readonly childEnd: Socket,
    private readonly source: Socket,
    private readonly reader: Reader,
  ) {}

  /** The socket's private directory is made in `parent` (the temp dir: TMPDIR). */
  static async open(parent = tmpdir()): Promise<ChildOutputRelay> {
    // mkdtemp's directory is 0700: no other user can connect before we do.
    const dir = await mkdtemp(join(parent, 'image-ci-relay-'));
    const path = join(dir, 's');
    // The child's end is read here only for the token below; then only the child writes into it.
    const server = createServer({ pauseOnConnect: true });
    const others = new Set<Socket>();
    let source: Socket | undefined;
    try {
      const bytes = Buffer.byteLength(path);
      if (bytes > MAX_SOCKET_PATH) {
        throw new Error(
          `the temp dir's path is too long for a socket: ${path} (${bytes} bytes, at most ${MAX_SOCKET_PATH}); set TMPDIR to a shorter path`,
        );
      }
      server.listen(path);
      await once(server, 'listening');
      // Another process of this user may connect first (another user cannot: the directory is 0700). The
      // child's end is the connection that sends this token; any other is closed.
      const token = randomBytes(16);
      const accepted = new Promise<Socket>((found, failed) => {
        // An accept error (EMFILE) ends the wait instead of going unhandled.
        server.once('error', failed);
        server.on('connection', (socket: Socket) => {
          others.add(socket);
          socket.on('error', () => undefined);
          let seen = Buffer.alloc(0);
          socket.on('data', (data: Buffer) => {
            seen = Buffer.concat([seen, data]);
            if (seen.length < token.length) return;
            socket.removeAllListeners('data');
            socket.pause();
            if (seen.equals(token)) {
              others.delete(socket);
              found(socket);
            }
          });
          socket.resume();
        });
      });
      const reader: Reader = {};
      const buffer = Buffer.allocUnsafe(BUFFER_BYTES);
      const client = connect({
        path,
        // Returning false pauses reading: the buffer is not read into again before `forward` resumes it.
        onread: { buffer, callback: (bytes: number) => (reader.forward!(buffer.subarray(0, bytes)), false) },
      });
      source = client;
      // Nothing is read before `into` resumes it.
      client.pause();
      // Out of descriptors, accept drops the connection: writing the token then fails (EPIPE) on our end, and
      // the server's accept error may come later or not at all. Either fails the open instead of going unhandled.
      let clientError: (error: Error) => void = () => undefined;
      const failed = new Promise<never>((_, reject) => (clientError = reject));
      client.once('error', clientError);
      await Promise.race([once(client, 'connect'), failed, accepted]);
      client.write(token);
      const childEnd = await Promise.race([accepted, failed]);
      client.removeListener('error', clientError);
      return new ChildOutputRelay(childEnd, client, reader);
    } catch (error) {
      source?.destroy();
      throw error;
    } finally {
      for (const other of others) other.destroy();
      server.close();
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Our copy of the child's end is closed, so that the child's exit ends the stream. */
  handedOver(): void {
    this.childEnd.destroy();
  }

  /** Both ends closed, for a child that never started: open, they would keep the process alive. */
  close(): void {
    this.childEnd.destroy();
    this.source.destroy();
  }

  /**
   * Relays until the child's output ends, then ends `dest`. Resolves with the first error (the check's, a read
   * or a write error), after destroying both ends as pipeline() does; with undefined once `dest` took all.
   */
  into(dest: Writable, check: (chunk: Buffer) => void): Promise<Error | undefined> {
    const { source } = this;
    return new Promise((settle) => {
      let settled = false;
      const done = (error?: Error) => {
        if (settled) return;
        settled = true;
        if (error) {
          source.destroy();
          dest.destroy();
        }
        settle(error);
      };
      this.reader.forward = (chunk) => {
        try {
          check(chunk);
        } catch (error) {
          done(error as Error);
          return;
        }
        // The buffer is free again only once the destination took the bytes.
        dest.write(chunk, (error) => (error ? done(error) : settled || source.resume()));
      };
      source.once('error', done);
      source.once('end', () => dest.end());
      // Also settles when `dest` closes before its end (a child's stdin is destroyed when the child exits): its
      // end() would never call back then.
      finished(dest, (error) => done(error ?? undefined));
      source.resume();
    });
  }
}
