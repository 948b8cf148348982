/**
 * One keep-alive HTTP/1.1 connection that GETs byte ranges of one URL, reading each body straight into a buffer
 * the caller lends (heads go into one reused buffer of its own). It serves the steady state of a ranged download
 * (every range after the first). Node's HTTP client allocates a fresh buffer per socket read: 1 GiB in 4 MiB
 * ranges from a local server cost it 2.0–2.4 CPU-seconds (most of them the garbage collector's, on helper
 * threads), and 0.6–0.7 read into one reused buffer and copied out; reading bodies straight into the lent buffer
 * saved a further 0.15–0.2 CPU-seconds of a 1 GiB warm start's main thread.
 *
 * Only the answer that steady state needs is read: 206 with a Content-Length and exactly the Content-Range asked
 * for (interim 1xx answers before it are passed over, as node's client does). Another status ends the connection
 * and is reported as that status; an answer framed in any other way (chunked, without a length, with bytes after
 * the body, an oversized head, a head node's parser refuses) is reported as not readable here, and the caller
 * gives up the download rather than guess.
 */
import { connect as netConnect, isIP, type OnReadOpts, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { LowSpeedLimit } from './low-speed.js';
import { parseRetryAfter } from './oci/retry.js';
import {
  openTunnel,
  ProxyError,
  proxyFor,
  proxySettings,
  speaksHttp,
  type ProxySettings,
} from './proxy-env.js';

/**
 * Where heads are read (and the first body bytes that come with them). Once a head is read, the rest of the body
 * is read into the caller's buffer, so this only needs to hold a usual head: a longer one takes several reads.
 */
const READ_BUFFER_BYTES = 16 * 1024;
/** Blob stores answer with a few hundred bytes of head; a server sending more is not one. */
const MAX_HEAD_BYTES = 64 * 1024;
const HEAD_END = Buffer.from('\r\n\r\n');
const HEAD_START = Buffer.from('HTTP/1.');
/** A header as node's parser takes it: a token, a colon, a value without control characters but tab. */
const HEADER_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*$/;

export interface ByteRange {
  start: number;
  /** Inclusive. */
  end: number;
}

/** Why a range was not received; `retryable` when asking again may help (a lost connection, a timeout). */
export class RangeFailure extends Error {
  constructor(
    message: string,
    readonly retryable: boolean,
    /** The status of an answer that was not 206. */
    readonly status?: number,
    /**
     * Lost before any byte of the answer, on a connection that had answered before: a kept-alive connection
     * the server closed as the request went out. Any keep-alive client asks once more on a new connection.
     */
    readonly staleConnection = false,
    /** The Retry-After of an answer that was not 206. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = 'RangeFailure';
  }
}

export interface RangeAnswered {
  /** The body's length. */
  expected: number;
  /** The whole object's size, as the server gives it. */
  total: number;
}

/**
 * What a 206 answer to `range` must say, through either client: exactly that range (up to the total for the
 * last one) and, where a Content-Length is given, as many bytes; `lengthRequired` when it must be given.
 */
export function rangeAnswered(
  range: ByteRange,
  contentRange: string | undefined,
  contentLength: string | undefined,
  lengthRequired: boolean,
): RangeAnswered {
  const m = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(contentRange ?? '');
  if (!m || Number(m[1]) !== range.start || Number(m[2]) !== Math.min(range.end, Number(m[3]) - 1)) {
    throw new Error(`unexpected Content-Range '${contentRange ?? ''}' for ${range.start}-${range.end}`);
  }
  const expected = Number(m[2]) - range.start + 1;
  const wrongLength =
    contentLength === undefined
      ? lengthRequired
      : !/^\d+$/.test(contentLength) || Number(contentLength) !== expected;
  if (wrongLength) {
    throw new Error(
      `Content-Length ${contentLength ?? '(none)'} for a Content-Range of ${expected} bytes (${contentRange})`,
    );
  }
  return { expected, total: Number(m[3]) };
}

interface Request {
  range: ByteRange;
  into: Buffer;
  filled: number;
  /** Every byte of the answer so far, interim answers and head included. */
  received: number;
  /** Set once the head is read. */
  expected?: number;
  total?: number;
  contentRange?: string;
  done: (error: Error | undefined, total?: number) => void;
}

export class RangeConnection {
  /** Undefined while a proxy tunnel is being opened. */
  private socket: Socket | undefined;
  /** A request asked for before the tunnel was open. */
  private unsent: string | undefined;
  /** Why the tunnel could not be opened, for a request asked for after. */
  private openFailure: Error | undefined;
  /** Closing gives up a tunnel still being opened: its socket would hold the process until the timeout. */
  private readonly opening = new AbortController();
  /** The request but its Range. */
  private readonly requestHead: string;
  private readonly head = Buffer.allocUnsafe(MAX_HEAD_BYTES);
  private headBytes = 0;
  private request: Request | undefined;
  /** The low-speed limit of the request in flight; every read counts (nothing here waits for the caller). */
  private speed: LowSpeedLimit | undefined;
  private lastRead = 0;
  private reusable = true;
  private closed = false;
  private answered = 0;

  /**
   * Through the environment's proxy where one applies (proxy-env.ts): an https URL inside a CONNECT tunnel, an
   * http one in absolute form to the proxy, as the first range went through node's client.
   */
  constructor(
    url: URL,
    private readonly idleTimeoutMs: number,
    settings: ProxySettings = proxySettings(),
  ) {
    const proxy = proxyFor(url, settings);
    const forward = proxy !== undefined && speaksHttp(proxy) && url.protocol === 'http:';
    // pathname and search come out of URL percent-encoded: no byte here can end the request line early. The
    // user and password go as node's client sends them (the first range went through it).
    const credentials = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
    const auth =
      url.username || url.password
        ? `Authorization: Basic ${Buffer.from(credentials).toString('base64')}\r\n`
        : '';
    const proxyAuth = forward && proxy.authorization ? `Proxy-Authorization: ${proxy.authorization}\r\n` : '';
    const target = `${forward ? `${url.protocol}//${url.host}` : ''}${url.pathname}${url.search}`;
    this.requestHead = `GET ${target} HTTP/1.1\r\nHost: ${url.host}\r\n${auth}${proxyAuth}`;
    const port = Number(url.port) || (url.protocol === 'https:' ? 443 : 80);
    // URL keeps brackets around an IPv6 literal, which connect() does not take.
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    const buffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);
    // Node asks for the buffer of each next read after the callback of the last one: the rest of a body whose
    // head is read goes into the caller's buffer (all of it but its last byte, see bodyRest), anything else into
    // ours, which is copied out before the callback returns: reading never has to pause.
    const onread: OnReadOpts = {
      buffer: () => this.bodyRest() ?? buffer,
      callback: (bytes, into) => {
        try {
          if (into === buffer) this.take(buffer.subarray(0, bytes));
          else this.bodyRead(bytes);
          this.checkSpeed(bytes);
        } catch (error) {
          this.fail(error as Error);
        }
        return true;
      },
    };
    // tls.connect takes onread as net.connect does (node docs), but @types/node does not declare it there.
    const tlsTo = (to: string, options: ConnectionOptions, reads: OnReadOpts | undefined = onread) =>
      tlsConnect({ ...options, servername: isIP(to) ? undefined : to, onread: reads } as ConnectionOptions);
    if (proxy && !forward) {
      openTunnel(proxy, { hostname: host, port }, idleTimeoutMs, this.opening.signal).then(
        (raw) => {
          if (this.closed) {
            raw.destroy();
            return;
          }
          // onread does not apply to a TLS session over a socket given to it: its reads come as data events,
          // copied like any read into our buffer, and held to the low-speed limit as onread's are (without it a
          // range trickling through the proxy was waited on until the cache's overall timeout).
          const socket = tlsTo(host, { socket: raw }, undefined);
          socket.on('data', (chunk: Buffer) => {
            try {
              this.take(chunk);
              this.checkSpeed(chunk.length);
            } catch (error) {
              this.fail(error as Error);
            }
          });
          this.attach(socket, idleTimeoutMs);
        },
        (error: Error) => {
          const retryable = error instanceof ProxyError ? error.retryable : true;
          this.openFailure = new RangeFailure(error.message, retryable);
          this.fail(this.openFailure);
        },
      );
    } else if (proxy) {
      this.attach(
        proxy.protocol === 'https:'
          ? tlsTo(proxy.hostname, { host: proxy.hostname, port: proxy.port })
          : netConnect({ host: proxy.hostname, port: proxy.port, onread }),
        idleTimeoutMs,
      );
    } else {
      this.attach(
        url.protocol === 'https:' ? tlsTo(host, { host, port }) : netConnect({ host, port, onread }),
        idleTimeoutMs,
      );
    }
  }

  private attach(socket: Socket, idleTimeoutMs: number): void {
    this.socket = socket;
    socket.setTimeout(idleTimeoutMs, () =>
      this.fail(new RangeFailure(`no data for ${idleTimeoutMs} ms`, true)),
    );
    socket.on('error', (error) => this.lost(error.message));
    // The server's end of a kept-alive connection: the close follows, a request sent before it would be lost.
    socket.on('end', () => (this.reusable = false));
    socket.on('close', () => this.lost(this.lostMessage()));
    if (this.unsent !== undefined) socket.write(this.unsent);
    this.unsent = undefined;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Whether another range may be asked for on this connection. */
  get usable(): boolean {
    return !this.closed && this.reusable && this.request === undefined;
  }

  /**
   * Reads `range` into the start of `into` (at least the range's length); resolves with the total size the
   * server gave. The connection is closed on any failure and on `signal`.
   */
  get(range: ByteRange, into: Buffer, signal?: AbortSignal): Promise<number> {
    if (!this.usable) {
      return Promise.reject(this.openFailure ?? new RangeFailure('the connection cannot be reused', true));
    }
    return new Promise((resolve, reject) => {
      const onAbort = () => this.fail(signal!.reason as Error);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.headBytes = 0;
      this.speed = new LowSpeedLimit(this.idleTimeoutMs);
      this.lastRead = performance.now();
      this.request = {
        range,
        into,
        filled: 0,
        received: 0,
        done: (error, total) => {
          signal?.removeEventListener('abort', onAbort);
          if (error) reject(error);
          else resolve(total!);
        },
      };
      if (signal?.aborted) {
        onAbort();
        return;
      }
      const head = `${this.requestHead}Range: bytes=${range.start}-${range.end}\r\n\r\n`;
      if (this.socket) this.socket.write(head);
      else this.unsent = head;
    });
  }

  close(): void {
    this.closed = true;
    this.opening.abort();
    this.socket?.destroy();
  }

  /**
   * The part of the lent buffer the body's next bytes go to, while a body is being read: all but its last byte,
   * which is read into our buffer with whatever the server sent right behind it. A read that ended exactly at the
   * body would leave such bytes in the socket, to be read as the answer to the next range asked for at once.
   */
  private bodyRest(): Buffer | undefined {
    const request = this.request;
    if (request?.expected === undefined || request.filled >= request.expected - 1) return undefined;
    return request.into.subarray(request.filled, request.expected - 1);
  }

  /** `bytes` of the body were read into the lent buffer, where `bodyRest` said (its last byte comes to `take`). */
  private bodyRead(bytes: number): void {
    const request = this.request;
    // A failed request closes the socket before it reads again; should a read still land, it is not believed.
    if (!request) throw new RangeFailure('the server sent bytes that were not asked for', false);
    request.received += bytes;
    request.filled += bytes;
  }

  private take(data: Buffer): void {
    const request = this.request;
    // Bytes nobody asked for: whatever this server is doing, the connection is not reused.
    if (!request) throw new RangeFailure('the server sent bytes that were not asked for', false);
    request.received += data.length;
    let offset = 0;
    // More than one head when interim (1xx) answers come first.
    while (request.expected === undefined) {
      const copied = data.copy(this.head, this.headBytes, offset);
      // The end may straddle the previous read.
      const end = this.head
        .subarray(0, this.headBytes + copied)
        .indexOf(HEAD_END, Math.max(0, this.headBytes - 3));
      // What follows the head is body, any byte allowed.
      this.checkHeadBytes(this.headBytes, end === -1 ? this.headBytes + copied : end + HEAD_END.length);
      if (end === -1) {
        this.headBytes += copied;
        if (this.headBytes === MAX_HEAD_BYTES) {
          throw new RangeFailure(`an answer head of more than ${MAX_HEAD_BYTES} bytes`, false);
        }
        return;
      }
      offset += end + HEAD_END.length - this.headBytes;
      this.headBytes = 0;
      this.readHead(request, this.head.toString('latin1', 0, end));
    }
    const body = data.length - offset;
    if (request.filled + body > request.expected!) {
      throw new RangeFailure(`more than the ${request.expected} bytes of ${request.contentRange}`, false);
    }
    data.copy(request.into, request.filled, offset);
    request.filled += body;
    if (request.filled === request.expected) {
      this.request = undefined;
      this.answered++;
      request.done(undefined, request.total);
      if (!this.reusable) this.close();
    }
  }

  /** A range still in flight that trickles is a stall like one that went silent: worth another try. */
  private checkSpeed(bytes: number): void {
    if (!this.request || !this.speed) return;
    const now = performance.now();
    const slow = this.speed.arrived(bytes, now - this.lastRead);
    this.lastRead = now;
    if (slow) throw new RangeFailure(slow, true);
  }

  /**
   * Fails as soon as the head's bytes from `from` to `to` show it is not HTTP/1.x, rather than waiting for an end
   * of head that such an answer never sends (the idle timeout would make it a failure worth another try).
   */
  private checkHeadBytes(from: number, to: number): void {
    const prefix = Math.min(to, HEAD_START.length);
    if (from < prefix && this.head.compare(HEAD_START, from, prefix, from, prefix) !== 0) {
      throw new RangeFailure('not an HTTP/1.x answer', false);
    }
    for (let lf = this.head.indexOf(10, from); lf !== -1 && lf < to; lf = this.head.indexOf(10, lf + 1)) {
      // Node's parser refuses a bare LF too.
      if (lf === 0 || this.head[lf - 1] !== 13) {
        throw new RangeFailure('a line of the answer head that does not end in CRLF', false);
      }
    }
  }

  private readHead(request: Request, head: string): void {
    const [statusLine = '', ...lines] = head.split('\r\n');
    const status = /^HTTP\/1\.([01]) ([1-9][0-9]{2})(?: [\t\x20-\x7e\x80-\xff]*)?$/.exec(statusLine);
    if (!status) throw new RangeFailure('not an HTTP/1.x answer', false);
    const headers = new Map<string, string>();
    for (const line of lines) {
      // Folded lines, a space before the colon and control characters are how request smuggling starts; a blob
      // store sends none of them, and node's parser refuses them.
      const header = HEADER_LINE.exec(line);
      if (!header) throw new RangeFailure('a malformed header line', false);
      const name = header[1]!.toLowerCase();
      const previous = headers.get(name);
      if (previous !== undefined && ['content-length', 'content-range', 'transfer-encoding'].includes(name)) {
        throw new RangeFailure(`two ${name} headers`, false);
      }
      // As node joins them: a close in any Connection header counts.
      headers.set(name, previous === undefined ? header[2]! : `${previous}, ${header[2]}`);
    }
    const code = Number(status[2]);
    // Interim answers have no body; node's client passes over them to the answer that follows (101 is not one:
    // it switches protocols).
    if (code < 200 && code !== 101) return;
    if (code !== 206) {
      // Its body is not read: the connection goes, and the caller decides what the status means.
      this.reusable = false;
      throw new RangeFailure(`HTTP ${code}`, false, code, false, parseRetryAfter(headers.get('retry-after')));
    }
    if (status[1] === '0' || /(^|[\s,])close($|[\s,])/i.test(headers.get('connection') ?? '')) {
      this.reusable = false;
    }
    if (headers.has('transfer-encoding')) {
      throw new RangeFailure(
        `a range sent with Transfer-Encoding ${headers.get('transfer-encoding')}`,
        false,
      );
    }
    const contentRange = headers.get('content-range');
    let answered: RangeAnswered;
    try {
      answered = rangeAnswered(request.range, contentRange, headers.get('content-length'), true);
    } catch (error) {
      throw new RangeFailure((error as Error).message, false);
    }
    const { expected, total } = answered;
    if (expected > request.into.length) {
      throw new RangeFailure(
        `a range of ${expected} bytes where ${request.into.length} were asked for`,
        false,
      );
    }
    request.expected = expected;
    request.total = total;
    request.contentRange = contentRange;
  }

  private lostMessage(): string {
    const request = this.request;
    if (!request) return 'the connection closed';
    if (request.expected === undefined) return 'the connection closed before an answer';
    return `connection lost after ${request.filled} of ${request.expected} bytes`;
  }

  private lost(message: string): void {
    const stale = this.answered > 0 && this.request?.received === 0;
    this.fail(new RangeFailure(message, true, undefined, stale));
  }

  private fail(error: Error): void {
    const request = this.request;
    this.request = undefined;
    this.close();
    request?.done(error);
  }
}
