/**
 * Downloads one large object (a signed cache-archive URL) as parallel ranged GETs and hands the bytes to a
 * consumer strictly in order, so a decompressor can start on the first megabytes while later ones are still on
 * the wire. At most `concurrency` ranges exist at a time, in flight or in memory. A range that fails (connection
 * cut, short body, 5xx, timeout) is asked for again with backoff, drawing on one retry budget for the whole
 * download; a 429/5xx with Retry-After is asked for again after that wait (up to the policy's cap), not sooner:
 * a throttled blob store asked at once answers the same, and the budget would be spent in seconds. A 4xx means
 * the URL itself is no good and is not retried. A range that trickles (under the low-speed limit of
 * low-speed.ts over the idle timeout) is a failed range too: asked for again rather than waited on.
 *
 * The size comes from the server (the first answer's Content-Range), so it is not trusted: above `maxBytes` the
 * download stops at once, and an answer that contradicts it (another total, a Content-Length that is not the
 * range's) ends the download instead of being retried.
 *
 * The first range goes through node's HTTP client, which takes whatever the server does (it may ignore Range and
 * send everything). The ranges after it go through RangeConnection, which reads only the answer expected by then
 * into buffers that are used again once the consumer handed the bytes on.
 */
import { request as httpRequest, Agent as HttpAgent, type IncomingMessage } from 'node:http';
import {
  request as httpsRequest,
  Agent as HttpsAgent,
  type AgentOptions as HttpsAgentOptions,
} from 'node:https';
import type { Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions as TlsConnectionOptions } from 'node:tls';
import {
  forwardRefusal,
  openTunnel,
  ProxyError,
  proxyFor,
  speaksHttp,
  unsupportedProxy,
  type ProxyServer,
} from './proxy-env.js';
import { setTimeout as delay } from 'node:timers/promises';
import { withLowSpeedLimit } from './low-speed.js';
import { backoffDelay, isRetryableStatus, parseRetryAfter, type RetryPolicy } from './oci/retry.js';
import {
  RangeConnection,
  RangeFailure,
  rangeAnswered,
  type ByteRange,
  type RangeAnswered,
} from './range-connection.js';
import { errorMessage } from './run.js';
import { formatBytes, formatSeconds } from './summary.js';
import { MAX_REDIRECTS, REDIRECT_STATUSES, refusedRedirect } from './redirects.js';

export interface RangedDownloadOptions {
  chunkBytes: number;
  concurrency: number;
  /** A request that receives no byte for this long is aborted (and retried). */
  idleTimeoutMs: number;
  /** Retries shared by all ranges of the download (`retry.retries` is the limit for one range). */
  retryBudget: number;
  retry: RetryPolicy;
  /** The largest object the caller can take (e.g. the free space it is extracted to). */
  maxBytes: number;
  signal?: AbortSignal;
  onRetry?: (what: string, error: Error) => void;
}

export interface RangedDownloadResult {
  bytes: number;
  /** 1 when the server ignored Range and sent everything in one response. */
  ranges: number;
  retries: number;
}

/** The URL answered with a client error: asking again cannot help. */
export class UrlRefusedError extends Error {
  constructor(readonly status: number) {
    super(`the download URL answered HTTP ${status}`);
    this.name = 'UrlRefusedError';
  }
}

class RetryableError extends Error {
  constructor(
    message: string,
    /** The server's Retry-After (a 429 or 503 from a throttled blob store), waited before the next try. */
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

/**
 * Takes the next bytes in order, as the pieces they arrived in (joining 4 MiB ranges into one buffer would copy
 * every byte once more); resolves when they are handed on: the pieces' memory is then read into again.
 */
type Consumer = (pieces: Buffer[]) => Promise<void>;

/**
 * The library follows the archive URL's redirects: refused here, the restore went to it, and it extracts the
 * archive unchecked. The first range's answer decides: a redirect restarts the download at its target, which
 * then serves every range.
 */
export async function downloadInOrder(
  url: string,
  consume: Consumer,
  options: RangedDownloadOptions,
): Promise<RangedDownloadResult> {
  let target = new URL(url);
  for (let redirects = 0; ; redirects++) {
    const done = await downloadFrom(target, consume, options);
    if (!(done instanceof URL)) return done;
    if (redirects === MAX_REDIRECTS)
      throw new Error(`the archive URL redirected more than ${MAX_REDIRECTS} times`);
    const refused = refusedRedirect(target, done);
    if (refused) throw new Error(`the archive URL redirected ${refused}`);
    target = done;
  }
}

/** The download from `target`, or where its first range was redirected to. */
async function downloadFrom(
  target: URL,
  consume: Consumer,
  options: RangedDownloadOptions,
): Promise<RangedDownloadResult | URL> {
  const secure = target.protocol === 'https:';
  const proxy = proxyFor(target);
  // Stops the ranges still in flight (and their retries) once the download has failed or finished.
  const stop = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
  const agentOptions = { keepAlive: true, maxSockets: options.concurrency };
  const agent = secure
    ? proxy
      ? tunnellingAgent(proxy, agentOptions, options.idleTimeoutMs, signal)
      : new HttpsAgent(agentOptions)
    : new HttpAgent(agentOptions);
  const state = { retries: 0 };
  const get = (range: ByteRange) =>
    withRetries(range, options, state, signal, () =>
      fetchOnce(target, secure, agent, range, { ...options, signal }),
    );
  const pool = new RangePool(target, options.idleTimeoutMs, options.chunkBytes);
  const inFlight = new Map<number, Promise<Lent>>();
  try {
    const first = await get({ start: 0, end: options.chunkBytes - 1 });
    if (first.kind === 'redirect') return first.location;
    if (first.kind === 'whole') {
      const bytes = await first.stream(consume);
      return { bytes, ranges: 1, retries: state.retries };
    }
    const total = first.total;
    tooLarge(total, options.maxBytes);
    const firstLength = first.body.reduce((sum, piece) => sum + piece.length, 0);
    // Ranges are made as they are sent for: the count follows from the server's word, memory must not.
    const rangeAt = (start: number): ByteRange => ({
      start,
      end: Math.min(total, start + options.chunkBytes) - 1,
    });
    const ranges = Math.ceil((total - firstLength) / options.chunkBytes);
    let next = 0;
    const fill = () => {
      while (next < ranges && inFlight.size < options.concurrency) {
        const range = rangeAt(firstLength + next * options.chunkBytes);
        const promise = withRetries(range, options, state, signal, () => pool.fetch(range, signal)).then(
          (lent) => {
            if (lent.total !== total) {
              lent.release();
              throw new Error(`the archive size changed from ${total} to ${lent.total} bytes`);
            }
            return lent;
          },
        );
        // Rejections are observed when the consumer reaches this range (or after an earlier failure, never).
        promise.catch(() => undefined);
        inFlight.set(next++, promise);
      }
    };
    fill();
    await consume(first.body);
    for (let i = 0; i < ranges; i++) {
      const lent = await inFlight.get(i)!;
      inFlight.delete(i);
      fill();
      await consume([lent.bytes]);
      lent.release();
    }
    return { bytes: total, ranges: ranges + 1, retries: state.retries };
  } finally {
    stop.abort();
    agent.destroy();
    pool.close();
  }
}

/** A range's bytes in a buffer of the pool, until `release` gives the buffer back. */
interface Lent {
  bytes: Buffer;
  total: number;
  release(): void;
}

/**
 * The connections and buffers of the ranges after the first: at most one connection per range in flight, kept
 * open between ranges, and one buffer per range in flight or being consumed, each used again once released.
 */
class RangePool {
  private readonly connections: RangeConnection[] = [];
  private readonly spare: Buffer[] = [];

  constructor(
    private readonly url: URL,
    private readonly idleTimeoutMs: number,
    private readonly bufferBytes: number,
  ) {}

  async fetch(range: ByteRange, signal: AbortSignal): Promise<Lent> {
    const buffer = this.spare.pop() ?? Buffer.allocUnsafe(this.bufferBytes);
    let total: number;
    try {
      try {
        total = await (this.connections.find((c) => c.usable) ?? this.open()).get(range, buffer, signal);
      } catch (error) {
        // The server closed a kept-alive connection as the request went out (it may do so at any time, with or
        // without saying so): asking on a new one is not a retry. Its own loss would not be stale.
        if (!(error instanceof RangeFailure && error.staleConnection)) throw error;
        total = await this.open().get(range, buffer, signal);
      }
    } catch (error) {
      this.spare.push(buffer);
      throw downloadError(error as Error);
    } finally {
      this.forgetClosed();
    }
    const length = Math.min(range.end, total - 1) - range.start + 1;
    return { bytes: buffer.subarray(0, length), total, release: () => this.spare.push(buffer) };
  }

  close(): void {
    for (const connection of this.connections) connection.close();
  }

  private open(): RangeConnection {
    const connection = new RangeConnection(this.url, this.idleTimeoutMs);
    this.connections.push(connection);
    return connection;
  }

  private forgetClosed(): void {
    for (let i = this.connections.length - 1; i >= 0; i--) {
      if (this.connections[i]!.isClosed) this.connections.splice(i, 1);
    }
  }
}

/** What a failed range means here: the same as the first range's failures through node's client. */
function downloadError(error: Error): Error {
  if (!(error instanceof RangeFailure)) return error;
  if (error.status === 200) return new Error('the server stopped honouring Range');
  if (error.status !== undefined) {
    return isRetryableStatus(error.status)
      ? busy(error.status, error.retryAfterMs)
      : new UrlRefusedError(error.status);
  }
  return error.retryable ? new RetryableError(error.message) : error;
}

/** A 429/5xx, saying the wait the server asked for: the log line of the retry tells why it waits. */
function busy(status: number, retryAfterMs: number | undefined): RetryableError {
  const asked = retryAfterMs === undefined ? '' : ` (Retry-After ${formatSeconds(retryAfterMs)})`;
  return new RetryableError(`HTTP ${status}${asked}`, retryAfterMs);
}

type Answer =
  | { kind: 'range'; body: Buffer[]; total: number }
  | { kind: 'whole'; stream: (consume: Consumer) => Promise<number> }
  | { kind: 'redirect'; location: URL };

async function withRetries<T>(
  range: ByteRange,
  options: RangedDownloadOptions,
  state: { retries: number },
  /** Ends the wait for the next try too: a failed or abandoned download leaves no timer running. */
  signal: AbortSignal,
  fetch: () => Promise<T>,
): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fetch();
    } catch (error) {
      if (!(error instanceof RetryableError) || signal.aborted) throw error;
      if (attempt >= options.retry.retries || state.retries >= options.retryBudget) {
        throw new Error(`gave up after ${state.retries} retries: ${error.message}`);
      }
      state.retries++;
      options.onRetry?.(`bytes ${range.start}-${range.end}`, error);
      await delay(backoffDelay(attempt, options.retry, error.retryAfterMs), undefined, { signal }).catch(
        () => {
          throw signal.reason;
        },
      );
    }
  }
}

function fetchOnce(
  url: URL,
  secure: boolean,
  agent: HttpAgent,
  range: ByteRange,
  options: RangedDownloadOptions,
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { Range: `bytes=${range.start}-${range.end}` };
    // An http URL behind a proxy is asked of the proxy, in absolute form (an https one goes through the agent's
    // tunnel).
    const proxy = secure ? undefined : proxyFor(url);
    if (proxy && !speaksHttp(proxy)) {
      reject(unsupportedProxy(proxy));
      return;
    }
    if (proxy?.authorization) headers['Proxy-Authorization'] = proxy.authorization;
    const req = proxy
      ? httpRequest({
          host: proxy.hostname,
          port: proxy.port,
          // Without user and password (they go as Authorization, as without a proxy) and without a fragment.
          path: `${url.protocol}//${url.host}${url.pathname}${url.search}`,
          agent,
          headers: { ...headers, Host: url.host, ...basicAuth(url) },
          signal: options.signal,
        })
      : (secure ? httpsRequest : httpRequest)(url, { agent, headers, signal: options.signal });
    req.setTimeout(options.idleTimeoutMs, () =>
      req.destroy(new RetryableError(`no data for ${options.idleTimeoutMs} ms`)),
    );
    req.on('error', (error) =>
      reject(
        error instanceof RetryableError ||
          options.signal?.aborted ||
          (error instanceof ProxyError && !error.retryable)
          ? error
          : new RetryableError(error.message),
      ),
    );
    req.on('response', (res) => {
      const status = res.statusCode ?? 0;
      if (status === 206) {
        collectRange(res, range, options.idleTimeoutMs).then(resolve, reject);
      } else if (status === 200 && range.start === 0) {
        resolve({
          kind: 'whole',
          stream: (consume) => streamWhole(res, consume, options.maxBytes, options.idleTimeoutMs),
        });
      } else if (REDIRECT_STATUSES.has(status) && range.start === 0 && res.headers.location) {
        res.resume();
        try {
          resolve({ kind: 'redirect', location: new URL(res.headers.location, url) });
        } catch {
          reject(new Error('the archive URL redirected to something that is not a URL'));
        }
      } else {
        res.resume();
        const refused = forwardRefusal(url, status, res.statusMessage ?? '');
        if (refused) reject(refused);
        else if (isRetryableStatus(status)) reject(busy(status, parseRetryAfter(res.headers['retry-after'])));
        else reject(new UrlRefusedError(status));
      }
    });
    req.end();
  });
}

/** The URL's user and password as node's client sends them when it is given the URL itself. */
function basicAuth(url: URL): Record<string, string> {
  if (!url.username && !url.password) return {};
  const credentials = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
  return { Authorization: `Basic ${Buffer.from(credentials).toString('base64')}` };
}

/**
 * An https agent whose connections are CONNECT tunnels through `proxy`, TLS to the target inside them (node's
 * Agent takes a socket from createConnection's callback).
 */
function tunnellingAgent(
  proxy: ProxyServer,
  options: HttpsAgentOptions,
  timeoutMs: number,
  /**
   * The download's end: it gives up the tunnels still being opened. Node's request reports its own abort only
   * once it has a socket, so an abandoned download waited for the proxy's answer or the whole timeout.
   */
  opening: AbortSignal,
): HttpsAgent {
  const agent = new HttpsAgent(options);
  (agent as unknown as { createConnection: CreateConnection }).createConnection = (
    connectOptions,
    callback,
  ) => {
    const hostname = connectOptions.host ?? 'localhost';
    openTunnel(proxy, { hostname, port: connectOptions.port ?? 443 }, timeoutMs, opening).then(
      (socket) => callback(null, tlsConnect({ ...connectOptions, socket })),
      (error: Error) => callback(error, undefined),
    );
    return undefined;
  };
  return agent;
}

type CreateConnection = (
  options: TlsConnectionOptions & { host?: string; port?: number },
  callback: (error: Error | null, socket: Socket | undefined) => void,
) => Socket | undefined;

/** Reads one 206 answer, checking that it is exactly the range asked for. */
async function collectRange(res: IncomingMessage, range: ByteRange, idleTimeoutMs: number): Promise<Answer> {
  let answered: RangeAnswered;
  try {
    answered = rangeAnswered(range, res.headers['content-range'], res.headers['content-length'], false);
  } catch (error) {
    res.destroy();
    throw error;
  }
  const { expected, total } = answered;
  const chunks: Buffer[] = [];
  let length = 0;
  const body = withLowSpeedLimit(
    res as AsyncIterable<Buffer>,
    idleTimeoutMs,
    (reason) => new RetryableError(reason),
  );
  try {
    for await (const chunk of body) {
      length += (chunk as Buffer).length;
      if (length > expected) break;
      chunks.push(chunk as Buffer);
    }
  } catch (error) {
    if (error instanceof RetryableError) throw error;
    throw new RetryableError(`connection lost after ${length} of ${expected} bytes: ${errorMessage(error)}`);
  }
  if (length > expected)
    throw new Error(`more than the ${expected} bytes of ${res.headers['content-range']}`);
  if (length !== expected) throw new RetryableError(`got ${length} of ${expected} bytes`);
  return { kind: 'range', body: chunks, total };
}

function tooLarge(bytes: number, maxBytes: number): void {
  if (bytes > maxBytes) {
    throw new Error(
      `the server says the archive is ${formatBytes(bytes)}, more than the ${formatBytes(maxBytes)} it can be extracted to`,
    );
  }
}

/** A server that ignores Range: pass the single body on as it comes; a cut here cannot be resumed. */
async function streamWhole(
  res: IncomingMessage,
  consume: Consumer,
  maxBytes: number,
  idleTimeoutMs: number,
): Promise<number> {
  const declared = res.headers['content-length'];
  const limit = declared === undefined ? maxBytes : Number(declared);
  tooLarge(limit, maxBytes);
  let length = 0;
  // Only the waits for the server count: the consumer's own pace (a slow extraction) is not a trickle.
  const body = withLowSpeedLimit(
    res as AsyncIterable<Buffer>,
    idleTimeoutMs,
    (reason) => new Error(`the download got ${reason}`),
  );
  for await (const chunk of body) {
    length += (chunk as Buffer).length;
    if (length > limit) {
      res.destroy();
      throw new Error(`the download sent more than ${limit} bytes`);
    }
    await consume([chunk as Buffer]);
  }
  if (declared !== undefined && Number(declared) !== length) {
    throw new Error(`the download ended after ${length} of ${declared} bytes`);
  }
  return length;
}
