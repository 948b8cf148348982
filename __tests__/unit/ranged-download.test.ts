/**
 * downloadInOrder with the first range through node's client and the others through RangeConnection: the
 * bytes come out whole and in order through buffers that are used again, and a later range's failure means
 * what the same failure of the first range means.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { DEFAULT_RETRY } from '../../src/core/oci/retry.js';
import { downloadInOrder, UrlRefusedError } from '../../src/core/ranged-download.js';
import { trickle } from '../support/trickle.js';

const CHUNK = 64 * 1024;
const data = randomBytes(40 * CHUNK + 123);
const servers: Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

/**
 * Answers each ranged GET with its bytes, or with what `special` writes for the n-th request (from 0); every
 * answer closes the connection when `close` is set.
 */
async function archiveServer(options: {
  close?: boolean;
  /** Close each connection after its answer without saying so (no Connection: close). */
  silentClose?: boolean;
  special?: (index: number, socket: Socket, start: number) => boolean;
}) {
  const stats = { connections: 0, requests: 0 };
  const server = createServer((socket) => {
    stats.connections++;
    let pending = '';
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      pending += chunk.toString('latin1');
      for (let end = pending.indexOf('\r\n\r\n'); end !== -1; end = pending.indexOf('\r\n\r\n')) {
        const m = /Range: bytes=(\d+)-(\d+)/i.exec(pending.slice(0, end))!;
        pending = pending.slice(end + 4);
        const index = stats.requests++;
        const start = Number(m[1]);
        if (options.special?.(index, socket, start)) continue;
        const last = Math.min(Number(m[2]), data.length - 1);
        socket.write(
          `HTTP/1.1 206 Partial Content\r\nContent-Range: bytes ${start}-${last}/${data.length}\r\n` +
            `Content-Length: ${last - start + 1}\r\n${options.close ? 'Connection: close\r\n' : ''}\r\n`,
        );
        socket.write(data.subarray(start, last + 1));
        if (options.close || options.silentClose) socket.end();
      }
    });
  });
  servers.push(server);
  await new Promise<void>((ready) => server.listen(0, '127.0.0.1', ready));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/archive`, stats };
}

async function download(url: string, idleTimeoutMs = 5000) {
  const received: Buffer[] = [];
  const retried: string[] = [];
  const reasons: string[] = [];
  const result = await downloadInOrder(
    url,
    async (pieces) => {
      // Taken late, as a slow consumer would: the pieces must hold their bytes until this resolves.
      await new Promise((later) => setTimeout(later, 1));
      for (const piece of pieces) received.push(Buffer.from(piece));
    },
    {
      chunkBytes: CHUNK,
      concurrency: 4,
      idleTimeoutMs,
      retryBudget: 5,
      retry: { ...DEFAULT_RETRY, baseDelayMs: 1, maxDelayMs: 5 },
      maxBytes: 1e9,
      onRetry: (what, error) => {
        retried.push(what);
        reasons.push(error.message);
      },
    },
  );
  return { result, bytes: Buffer.concat(received), retried, reasons };
}

/** A request index that goes through node's client (the first range), and one through RangeConnection. */
const BOTH_CLIENTS: [string, number][] = [
  ['the first range (node client)', 0],
  ['a later range (range connection)', 3],
];

/** Answers with a 302 to `location`. */
function redirect(socket: Socket, location: string): true {
  socket.write(`HTTP/1.1 302 Found\r\nLocation: ${location}\r\nContent-Length: 0\r\n\r\n`);
  return true;
}

describe('ranged download', () => {
  it('follows a redirect of the first range (a relative Location resolved against the URL), but not to another scheme, nor endlessly', async () => {
    const moved = await archiveServer({
      special: (i, socket) => i === 0 && redirect(socket, '/signed?sig=x'),
    });
    const { result, bytes } = await download(moved.url);
    expect(bytes.equals(data)).toBe(true);
    expect(result.ranges).toBe(41);
    const loop = await archiveServer({ special: (_i, socket) => redirect(socket, '/again') });
    await expect(download(loop.url)).rejects.toThrow('the archive URL redirected more than 10 times');
    const file = await archiveServer({ special: (_i, socket) => redirect(socket, 'file:///etc/passwd') });
    await expect(download(file.url)).rejects.toThrow('the archive URL redirected to a file: URL');
  });

  it('hands on every byte in order through reused buffers, on at most one connection per range in flight', async () => {
    const { url, stats } = await archiveServer({});
    const { result, bytes } = await download(url);
    expect(bytes.equals(data)).toBe(true);
    expect(result).toEqual({ bytes: data.length, ranges: 41, retries: 0 });
    // The first range's connection (node's client), and the pool's four kept alive for the 40 others.
    expect(stats.connections).toBeLessThanOrEqual(5);
  });

  it('opens new connections where the server closes each one, and asks again for a range answered 503', async () => {
    const { url, stats } = await archiveServer({
      close: true,
      special: (index, socket) => {
        if (index !== 3) return false;
        socket.end('HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n');
        return true;
      },
    });
    const { result, bytes, retried } = await download(url);
    expect(bytes.equals(data)).toBe(true);
    expect(result.retries).toBe(1);
    expect(retried).toHaveLength(1);
    expect(stats.connections).toBe(42);
  });

  it('costs no retry when the server closes each kept-alive connection after its answer without saying so', async () => {
    const { url } = await archiveServer({ silentClose: true });
    const { result, bytes, retried } = await download(url);
    expect(bytes.equals(data)).toBe(true);
    expect(retried).toEqual([]);
    expect(result).toEqual({ bytes: data.length, ranges: 41, retries: 0 });
  });

  it('leaves no backoff timer behind when the download fails while other ranges wait to be asked again', async () => {
    let waiting = 0;
    let refuse: (() => void) | undefined;
    const { url } = await archiveServer({
      special: (_index, socket, start) => {
        if (start === CHUNK) {
          // The range the consumer needs first is refused once the three after it wait to be asked again.
          refuse = () => socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n');
          if (waiting === 3) refuse();
          return true;
        }
        if (start > CHUNK) socket.write('HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n');
        return start > CHUNK;
      },
    });
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const before = timers();
    const error = await downloadInOrder(url, async () => undefined, {
      chunkBytes: CHUNK,
      concurrency: 4,
      idleTimeoutMs: 60_000,
      retryBudget: 5,
      retry: { ...DEFAULT_RETRY, baseDelayMs: 30_000, maxDelayMs: 30_000 },
      maxBytes: 1e9,
      onRetry: () => {
        if (++waiting === 3) refuse?.();
      },
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(UrlRefusedError);
    expect(waiting).toBe(3);
    // The three waits ended with the download: nothing keeps the process alive for them.
    // At most: a timer of an earlier test (a closed server's keep-alive socket) may end meanwhile (seen in CI).
    expect(timers()).toBeLessThanOrEqual(before);
  });

  it.each([
    ['404', 'HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n', UrlRefusedError, 'HTTP 404'],
    ['200', 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello', Error, 'stopped honouring Range'],
  ])(
    'a later range answered %s fails the download at once, as the first range would',
    async (_status, answer, type, message) => {
      const { url } = await archiveServer({
        special: (index, socket) => {
          if (index !== 5) return false;
          socket.end(answer);
          return true;
        },
      });
      const error = await download(url).then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      expect(error).toBeInstanceOf(type);
      expect(error?.message).toContain(message);
    },
  );

  it.each(BOTH_CLIENTS)(
    '%s trickling under 1 KiB/s, never silent for the idle time, is asked for again as a stall',
    async (_which, trickled) => {
      const { url } = await archiveServer({
        special: (index, socket, start) =>
          index === trickled &&
          trickle(
            socket,
            `HTTP/1.1 206 Partial Content\r\nContent-Range: bytes ${start}-${start + CHUNK - 1}/${data.length}\r\n` +
              `Content-Length: ${CHUNK}\r\n\r\n`,
            data.subarray(start),
          ),
      });
      const { result, bytes, reasons } = await download(url, 300);
      expect(bytes.equals(data)).toBe(true);
      expect(result.retries).toBe(1);
      expect(reasons).toEqual([expect.stringMatching(/ in 0\.\d s, under 1\.0 KiB\/s \(stalled\)$/)]);
    },
  );

  it.each(BOTH_CLIENTS)(
    '%s answered 503 with Retry-After: 1 is asked for again after the wait the server asked for',
    async (_which, busy) => {
      const { url } = await archiveServer({
        special: (index, socket) => {
          if (index !== busy) return false;
          socket.write('HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n');
          return true;
        },
      });
      const started = performance.now();
      const { result, bytes, reasons } = await download(url);
      expect(bytes.equals(data)).toBe(true);
      expect(result.retries).toBe(1);
      expect(reasons).toEqual(['HTTP 503 (Retry-After 1 s)']);
      // A lower bound only: a loaded machine makes it longer, never shorter (the backoff alone is 1–5 ms here).
      expect(performance.now() - started).toBeGreaterThanOrEqual(950);
    },
  );

  it('a server that ignores Range and trickles the whole body under 1 KiB/s fails the download as stalled (a whole body cannot be resumed)', async () => {
    const { url } = await archiveServer({
      special: (_index, socket) =>
        trickle(socket, `HTTP/1.1 200 OK\r\nContent-Length: ${data.length}\r\n\r\n`, data),
    });
    const error = await download(url, 300).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(error?.message).toMatch(/^the download got only \d+ B in 0\.\d s, under 1\.0 KiB\/s \(stalled\)$/);
  });
});
