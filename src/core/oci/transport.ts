/**
 * The registry transport: one undici dispatcher per registry (the seam for per-registry TLS), the auth
 * challenge flow (Basic, or Bearer tokens per scope), the one retry policy and the timeouts. The operations in
 * pull.ts and upload.ts build requests; everything about getting an answer lives here.
 *
 * Timeouts are about silence, never about total time: `timeoutMs` bounds the wait for a lookup's response
 * headers, each gap between two pieces of a body (undici's headersTimeout/bodyTimeout), and each wait for an
 * upload's socket to take the next piece of a streamed body. A blob that keeps moving may take as long as it
 * needs (downloads have a low-speed limit against a trickle, low-speed.ts). Small requests (manifests, tokens,
 * HEADs) additionally end after their answer wait overall, so a server that trickles an endless answer cannot
 * hold them.
 *
 * A request that sends content to the registry (PATCH, PUT) may leave the registry working after its last
 * byte: the closing PUT of a blob makes it verify the digest and move the blob in its storage (an S3 or GCS
 * copy: minutes of silence for a multi-GiB layer are normal), Harbor and Quay can be slow to commit a
 * manifest. skopeo and docker wait for those answers without any limit; a 60 s limit here made a big layer
 * impossible to push (each retry uploads it again and times out again). Their answer wait is commitAnswerMs:
 * five silence timeouts, plus 2 minutes per GiB the registry works on (the whole blob for a closing PUT, the
 * chunk for a PATCH) — storage that verifies and copies at 8.5 MiB/s still answers in time. The five silence
 * timeouts also cover the bytes still in the socket buffers when the body has been handed over (several MiB
 * on a fast LAN), which a slow link drains after the body "ended". A bodyless POST (an upload's start, a
 * mount) has neither: it waits the silence timeout, so a registry that never answers it holds a try for one
 * silence timeout, not five. A mount answered late is not lost: its retry, or the HEAD after its last try,
 * finds the blob linked; one that was declined late (or dropped with the connection) leaves it to the upload.
 *
 * TLS as skopeo does it: the registry's certs.d material (tls.ts) on the transport's own dispatcher, and with
 * `tlsVerify: false` https without verification, falling back to plain http when the registry speaks only that.
 * The first request finds out (a failed handshake, then the same request over http); requests started
 * meanwhile wait for its answer, so the fallback costs one handshake per registry, not one per request.
 * Lookups (GET/HEAD without a body) do not wait for the http answer: once the handshake met a plain-http
 * answer they go over http beside the probe's own try, carrying no more than it does, and are kept only if
 * the probe settles on http. That saves a push's lookups one round trip.
 */
import { Agent, buildConnector, type Dispatcher } from 'undici';
import type { Credential } from './credential.js';
import { parseChallenges, preferredChallenge } from './challenge.js';
import { RegistryError } from './errors.js';
import { registryApiHost } from './reference.js';
import {
  DEFAULT_RETRY,
  RetryBudget,
  TransientError,
  isRetryableStatus,
  parseRetryAfter,
  serverWait,
} from './retry.js';
import type { RetryPolicy } from './retry.js';
import { RegistryAuth } from './token.js';
import {
  failureMessage,
  networkFailure,
  SEND_STALLED,
  type RegistryResponse,
  withoutPrototypeHeaderNames,
  wrapResponse,
} from './response.js';
import { isPlainHttpAnswer, isTlsAlert, tlsConnectOptions, tlsFailure, type RegistryTls } from './tls.js';
import { forwardHttp, proxyConnector } from '../proxy-env.js';

export interface TransportOptions {
  /** host[:port] as in an image reference (`docker.io` is reached at its API host). */
  registry: string;
  /** Plain http instead of https. */
  insecure?: boolean;
  /**
   * false: https without certificate verification, or plain http when the registry speaks only http (skopeo's
   * `--tls-verify=false`, a registry in `insecure-registries`). Default true.
   */
  tlsVerify?: boolean;
  /** Extra CAs and a client certificate for this registry (its certs.d directory), for the own dispatcher. */
  tls?: RegistryTls;
  credentials?: Credential;
  /** Called with every new bearer token so the caller can mask it. */
  onToken?: (token: string) => void;
  /** Told, as a log line, each wait before a retry that the registry set with Retry-After. */
  onServerWait?: (line: string) => void;
  /**
   * Told, as a log line, each write whose answer was lost (no usable answer on any try, or a retry refused
   * after such a try) and that a HEAD then showed done: counted as done, and the log says why.
   */
  onLostAnswer?: (line: string) => void;
  /** Longest silence: the wait for response headers, or between two pieces of a body (default 60 s). */
  timeoutMs?: number;
  /** Tries after the first one, for each operation as a whole (default 5: six tries). */
  retries?: number;
  /** First backoff step; tests shorten it. */
  retryBaseDelayMs?: number;
  userAgent?: string;
  /**
   * How to reach this registry (and its token server): connection pool, TLS trust, client certificates.
   * Given by the caller that knows the registry's TLS rules; the transport then leaves closing it to them.
   */
  dispatcher?: Dispatcher;
}

export interface TransportStats {
  requests: number;
  retries: number;
  /** Blob bytes the registry accepted (a resumed or restarted upload counts once). */
  bytesUploaded: number;
}

/** The first request to a registry of unknown scheme, while it finds out. */
interface SchemeProbe {
  answer: Promise<RegistryResponse>;
  /** true once its https try met a plain-http answer (its http try is then under way); false when it ended. */
  plainHttp: Promise<boolean>;
}

export interface RequestSpec {
  method: Dispatcher.HttpMethod;
  url: URL;
  /**
   * Token scopes this request needs at the registry, e.g. `repository:a/b:pull,push`; undefined for requests
   * to other services (the token server), which get no registry credentials.
   */
  scopes?: readonly string[];
  headers?: Record<string, string>;
  /**
   * A Buffer is replayed as often as the budget allows. A streamed body is made for one try: the transport
   * does not replay it but throws a TransientError, and the operation resumes as the protocol allows. Its
   * chunks go to undici as they are, not through a Readable that would read ahead: fileChunks reuses one buffer.
   */
  body?: Buffer | (() => AsyncIterable<Buffer>);
  /** Statuses the caller handles; anything else becomes a RegistryError (or is retried). */
  ok: readonly number[];
  /** What the request is for, in error messages ("HEAD blob sha256:... in repo"). */
  what: string;
  /** A blob's body follows: no overall deadline, only the silence timeout. */
  streaming?: boolean;
  /**
   * Set for a request that sends the registry content to store: the bytes it may work on after the body before
   * it answers (the whole blob for an upload's closing PUT, the chunk for a PATCH, the manifest for its PUT).
   * Its answer wait is commitAnswerMs instead of the silence timeout. Not set for a bodyless POST (see the top).
   */
  commitBytes?: number;
}

/** How many silence timeouts a registry may take to answer a request that changes what it holds. */
const COMMIT_TIMEOUTS = 5;
/** And for each GiB it verifies and moves before it answers (S3/GCS copy, a digest read back). */
const COMMIT_MS_PER_GIB = 120_000;

/** The longest wait for the answer to a request that changes what the registry holds (see the top). */
export function commitAnswerMs(timeoutMs: number, bytes: number): number {
  return COMMIT_TIMEOUTS * timeoutMs + Math.ceil((bytes / 1024 ** 3) * COMMIT_MS_PER_GIB);
}

const DEFAULT_TIMEOUT_MS = 60_000;
const MAX_REDIRECTS = 5;

export class RegistryTransport {
  readonly registry: string;
  readonly stats: TransportStats = { requests: 0, retries: 0, bytesUploaded: 0 };
  readonly timeoutMs: number;
  private readonly auth: RegistryAuth;
  private readonly base: string;
  private readonly policy: RetryPolicy;
  private readonly userAgent: string;
  private readonly onServerWait: ((line: string) => void) | undefined;
  readonly onLostAnswer: ((line: string) => void) | undefined;
  private readonly dispatcher: Dispatcher;
  private readonly ownsDispatcher: boolean;
  private readonly apiHost: string;
  /** apiHost as parsed: its hostname, and its port when one is written (else the scheme's default). */
  private readonly registryOrigin: { hostname: string; port?: string };
  private readonly tls: RegistryTls | undefined;
  /** http once an unverified registry turned out to speak only that. */
  private scheme: 'https:' | 'http:';
  /** Whether the scheme still has to be found out (tlsVerify false); the probe in flight, if any. */
  private schemeUnknown: boolean;
  private schemeProbe: SchemeProbe | undefined;
  /**
   * The last TLS alert one of our connections got. A server refusing a client certificate (TLS 1.3) sends its
   * alert after the handshake: undici then only reports "other side closed", the socket itself knows why.
   */
  private tlsAlert: unknown;

  constructor(options: TransportOptions) {
    this.registry = options.registry;
    this.apiHost = registryApiHost(options.registry);
    this.registryOrigin = {
      hostname: new URL(`http://${this.apiHost}`).hostname,
      port: /:(\d+)$/.exec(this.apiHost)?.[1]?.replace(/^0+(?=\d)/, ''),
    };
    this.scheme = options.insecure ? 'http:' : 'https:';
    this.schemeUnknown = !options.insecure && options.tlsVerify === false;
    this.tls = options.tls;
    this.base = `${this.scheme}//${this.apiHost}/v2/`;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.policy = {
      ...DEFAULT_RETRY,
      retries: options.retries ?? DEFAULT_RETRY.retries,
      baseDelayMs: options.retryBaseDelayMs ?? DEFAULT_RETRY.baseDelayMs,
    };
    this.userAgent = options.userAgent ?? 'image-ci-actions';
    this.onServerWait = options.onServerWait;
    this.onLostAnswer = options.onLostAnswer;
    this.ownsDispatcher = !options.dispatcher;
    this.dispatcher = (options.dispatcher ?? this.ownAgent(options)).compose(withoutPrototypeHeaderNames);
    this.auth = new RegistryAuth({
      registry: options.registry,
      credentials: options.credentials,
      onToken: options.onToken,
      sendAndRead: (spec, limit, budget) => this.sendAndRead(spec, limit, budget),
      budget: () => this.budget(),
    });
  }

  /**
   * Through the environment's proxy where one applies (proxy-env.ts): the registry's TLS settings then hold for
   * the TLS session inside the CONNECT tunnel, exactly as without a proxy.
   */
  private ownAgent(options: TransportOptions): Dispatcher {
    const connect = proxyConnector(
      buildConnector({
        timeout: this.timeoutMs,
        ...tlsConnectOptions(options.tls, options.tlsVerify !== false),
      }),
      this.timeoutMs,
    );
    return new Agent({
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
      connect: (connectOptions, callback) =>
        connect(connectOptions, (...args) => {
          args[1]?.on('error', (error) => {
            if (isTlsAlert(error)) this.tlsAlert = error;
          });
          callback(...args);
        }),
    }).compose(forwardHttp());
  }

  /** The TLS error behind a failed try: its own, or the alert its (closed) connection got. */
  private tlsCause(error: unknown): unknown {
    const code = (error as { code?: string }).code ?? '';
    return ['UND_ERR_SOCKET', 'ECONNRESET', 'EPIPE'].includes(code) && this.tlsAlert ? this.tlsAlert : error;
  }

  /** What a failed try says about TLS, if anything, in words with the fix. */
  private tlsProblem(error: unknown, what: string): Error | undefined {
    return tlsFailure(this.tlsCause(error), what, this.registry, this.tls);
  }

  /** How long `spec` waits for its answer (and, unless it streams, for all of it). */
  private answerMs(spec: RequestSpec): number {
    return spec.commitBytes === undefined ? this.timeoutMs : commitAnswerMs(this.timeoutMs, spec.commitBytes);
  }

  url(path: string): URL {
    return new URL(path, this.base);
  }

  /**
   * A fresh retry budget for one operation; every layer that restarts the operation draws from it. `retries`
   * lowers the policy's for an operation that is only worth one try.
   */
  budget(retries = this.policy.retries): RetryBudget {
    return new RetryBudget({ ...this.policy, retries }, (error, waitMs) => {
      this.stats.retries++;
      const line = serverWait(error, waitMs);
      if (line) this.onServerWait?.(line);
    });
  }

  async close(): Promise<void> {
    if (this.ownsDispatcher) await this.dispatcher.close();
  }

  /**
   * send() for an answer read whole (a manifest, a referrers page, a token): a body cut short, stalled or past the
   * deadline is a failed try like a failed request, retried within the same budget and told with `spec.what`.
   * Only a 2xx body is the answer: an error status the caller handles (a referrers 404, a token server's 401)
   * stands as it is when its body cannot be read, with no bytes, as failureMessage keeps a status.
   */
  async sendAndRead(
    spec: RequestSpec,
    limit: number,
    budget: RetryBudget = this.budget(),
  ): Promise<{ response: RegistryResponse; bytes: Buffer }> {
    for (;;) {
      const response = await this.send(spec, budget);
      try {
        return { response, bytes: await response.bytes(limit, spec.what) };
      } catch (error) {
        if (response.status >= 300) return { response, bytes: Buffer.alloc(0) };
        const failure = networkFailure(error, spec.what, this.timeoutMs, this.answerMs(spec));
        if (!(failure instanceof TransientError)) throw failure;
        await budget.next(failure);
      }
    }
  }

  /**
   * Sends a request until it gets an answer the caller handles. Network failures, stalls and 429/5xx are
   * retried within `budget` (Retry-After honoured); a 401 is answered with credentials as the challenge asks
   * (these protocol steps are not failures and are not counted as retries).
   */
  async send(spec: RequestSpec, budget: RetryBudget = this.budget()): Promise<RegistryResponse> {
    const answered = new Set<'anonymous' | 'refused'>();
    // Registry credentials are for the registry's own origin only (as docker keys its challenges by host): an
    // upload Location on another host (storage, or whoever the registry names) gets no Authorization at all.
    if (spec.scopes && !this.isRegistryUrl(spec.url)) spec = { ...spec, scopes: undefined };
    for (;;) {
      const authorization = spec.scopes ? await this.auth.authorization(spec.scopes) : undefined;
      let response: RegistryResponse;
      try {
        response = await this.dispatch(spec, authorization);
      } catch (error) {
        const tlsProblem = this.tlsProblem(error, spec.what);
        if (tlsProblem) throw tlsProblem;
        const failure = networkFailure(error, spec.what, this.timeoutMs, this.answerMs(spec));
        if (!(failure instanceof TransientError) || typeof spec.body === 'function') throw failure;
        await budget.next(failure);
        continue;
      }
      if (
        response.status === 401 &&
        spec.scopes &&
        !spec.ok.includes(401) &&
        !this.isRegistryUrl(response.url)
      ) {
        // A redirect target (storage, a CDN, or whoever sits on a plain-http leg) has no say in how we log in to
        // the registry: its challenge could name a token realm that would be sent our credentials.
        await response.drain();
        throw new RegistryError(
          `${spec.what}: HTTP 401 from ${response.url.origin}, where the registry redirected it (no registry credentials are sent there).`,
          401,
        );
      }
      if (response.status === 401 && spec.scopes && !spec.ok.includes(401)) {
        const challenges = parseChallenges(response.headerList('www-authenticate'));
        await response.drain();
        const round = authorization === undefined ? 'anonymous' : 'refused';
        // One round to answer the first challenge, one more with a fresh token if the first one is refused.
        if (!answered.has(round) && this.auth.challenged(challenges, spec.scopes, authorization)) {
          answered.add(round);
          if (typeof spec.body === 'function') {
            throw new TransientError(`${spec.what}: the registry asked for new credentials.`, 401, 0);
          }
          continue;
        }
        throw this.auth.refusal(challenges, spec.scopes, authorization, spec.what);
      }
      if (isRetryableStatus(response.status) && !spec.ok.includes(response.status)) {
        const failure = new TransientError(
          (await failureMessage(response, spec.what)).text,
          response.status,
          // The first one, as Go's Header.Get reads it: two proxies on the way may each have added theirs.
          parseRetryAfter(response.headerList('retry-after')[0]),
        );
        if (typeof spec.body === 'function') throw failure;
        await budget.next(failure);
        continue;
      }
      if (response.status === 403 && spec.scopes && !spec.ok.includes(403)) {
        // RFC 6750's answer for a token without the needed right; say which right rather than "HTTP 403".
        const challenges = parseChallenges(response.headerList('www-authenticate'));
        if (preferredChallenge(challenges)?.params.error === 'insufficient_scope') {
          await response.drain();
          throw this.auth.refusal(challenges, spec.scopes, authorization, spec.what, 403);
        }
      }
      if (!spec.ok.includes(response.status)) {
        const message = await failureMessage(response, spec.what);
        throw new RegistryError(message.text, response.status, message.code);
      }
      return response;
    }
  }

  /**
   * One try. While an unverified registry's scheme is unknown, the first request to it tries https and, when
   * that fails, the same request over http (a streamed body cannot be sent twice: it waits for a probe). Other
   * requests wait for its answer; lookups only for its handshake (besideProbe), once: a lookup sent beside
   * every probe would cost n²/2 clear-text requests when each probe's http try is refused in turn.
   */
  private async dispatch(
    spec: RequestSpec,
    authorization: string | undefined,
    beside = true,
  ): Promise<RegistryResponse> {
    while (this.schemeUnknown && this.isRegistryUrl(spec.url)) {
      if (this.schemeProbe) {
        const probe = this.schemeProbe;
        const lookup = beside && (spec.method === 'GET' || spec.method === 'HEAD') && spec.body === undefined;
        if (lookup && (await probe.plainHttp)) return this.besideProbe(spec, authorization, probe);
        await probe.answer.catch(() => undefined);
        continue;
      }
      let heard!: (plainHttp: boolean) => void;
      const plainHttp = new Promise<boolean>((resolve) => (heard = resolve));
      const answer = this.probeScheme(spec, authorization, () => heard(true));
      this.schemeProbe = { answer, plainHttp };
      try {
        return await answer;
      } finally {
        heard(false);
        this.schemeProbe = undefined;
      }
    }
    return this.dispatchOn(spec, authorization, this.scheme);
  }

  /** A lookup sent over http while the probe's http try is under way: its answer stands if the probe's does. */
  private async besideProbe(
    spec: RequestSpec,
    authorization: string | undefined,
    probe: SchemeProbe,
  ): Promise<RegistryResponse> {
    const sent = this.dispatchOn(spec, authorization, 'http:');
    sent.catch(() => undefined); // read below, once the probe has settled
    await probe.answer.catch(() => undefined);
    if (!this.schemeUnknown && this.scheme === 'http:') return sent;
    // Not http after all (or not yet known): this answer came from a server we do not speak to.
    await sent.then(
      (response) => response.drain(),
      () => undefined,
    );
    return this.dispatch(spec, authorization, false);
  }

  private async probeScheme(
    spec: RequestSpec,
    authorization: string | undefined,
    onPlainHttp: () => void,
  ): Promise<RegistryResponse> {
    const probeSpec: RequestSpec =
      typeof spec.body === 'function'
        ? { method: 'GET', url: this.url(''), ok: [], what: `reach ${this.registry}` }
        : spec;
    let response: RegistryResponse;
    try {
      response = await this.dispatchOn(probeSpec, authorization, 'https:');
    } catch (httpsError) {
      // Only a server that answered the TLS handshake in plain http may be spoken to in plain http. A reset, a
      // timeout or a TLS alert says nothing of the kind: falling back then would send credentials in clear
      // text to whatever listens there; the https failure is retried (or reported) instead.
      if (!isPlainHttpAnswer(httpsError)) throw httpsError;
      onPlainHttp();
      // The http try's own failure (a reset, a timeout) is retried as such; the next try probes again. Reported
      // as the https failure it would read "answered plain http: add it to insecure-registries", not retried.
      response = await this.dispatchOn(probeSpec, authorization, 'http:');
      if (response.status === 400) {
        // Plain http both ways, and refused: not taken for the registry's scheme (what an https server says to
        // plain http is a 400 too). Its own words tell why; the https failure's advice, "add it to
        // insecure-registries", would be wrong: the probe runs only for registries listed there.
        const message = await failureMessage(response, probeSpec.what);
        throw new RegistryError(message.text, 400, message.code);
      }
      this.scheme = 'http:';
    }
    this.schemeUnknown = false;
    if (probeSpec === spec) return response;
    await response.drain();
    return this.dispatchOn(spec, authorization, this.scheme);
  }

  /**
   * The registry's own origin, on either scheme: compared as the URL parser writes hosts (IPv6 compressed, a
   * default port dropped), so `host:443`, `[0:0::1]:5000` and `localhost:80` still match the URLs built from them.
   */
  isRegistryUrl(url: URL): boolean {
    if (url.protocol !== 'https:' && url.protocol !== 'http:') return false;
    const defaultPort = url.protocol === 'https:' ? '443' : '80';
    return (
      url.hostname === this.registryOrigin.hostname &&
      (url.port || defaultPort) === (this.registryOrigin.port ?? defaultPort)
    );
  }

  /** Follows redirects of GET/HEAD (blob storage); credentials never leave the origin they are for. */
  private async dispatchOn(
    spec: RequestSpec,
    authorization: string | undefined,
    scheme: 'https:' | 'http:',
  ): Promise<RegistryResponse> {
    const answerMs = this.answerMs(spec);
    // One deadline for a small request and the redirects it follows.
    const deadline = spec.streaming ? undefined : AbortSignal.timeout(answerMs);
    const first = this.onScheme(spec.url, scheme);
    let url = first;
    for (let redirects = 0; ; redirects++) {
      const headers: Record<string, string> = { ...spec.headers, 'user-agent': this.userAgent };
      if (authorization) headers.authorization = authorization;
      if (url.origin !== first.origin) delete headers.authorization;
      this.stats.requests++;
      // undici's headers timer, stretched to a commit's answer wait, would let a socket that stopped taking
      // the body hang as long: a streamed body is watched for that by its own silence timeout.
      const sending = typeof spec.body === 'function' ? watchedBody(spec.body(), this.timeoutMs) : undefined;
      let data: Dispatcher.ResponseData;
      try {
        data = await this.dispatcher.request({
          origin: url.origin,
          path: `${url.pathname}${url.search}`,
          method: spec.method,
          headers,
          // undici sends an async iterable as it is (its documentation says so; its types name only Readable).
          body: (sending?.body ?? spec.body) as Dispatcher.RequestOptions['body'],
          signal: sending?.signal ?? deadline,
          headersTimeout: answerMs,
          bodyTimeout: this.timeoutMs,
        });
      } finally {
        sending?.stop();
      }
      const response = wrapResponse(data, url, this.timeoutMs);
      const location = response.header('location');
      const follow = spec.method === 'GET' || spec.method === 'HEAD';
      if (!follow || ![301, 302, 303, 307, 308].includes(response.status) || !location) return response;
      await response.drain();
      if (redirects >= MAX_REDIRECTS) throw new RegistryError(`${spec.what}: too many redirects.`);
      url = new URL(location, url);
    }
  }

  /** The registry's own URLs on the scheme it speaks; other origins (token servers, storage) as they are. */
  private onScheme(url: URL, scheme: 'https:' | 'http:'): URL {
    if (!this.isRegistryUrl(url) || url.protocol === scheme) return url;
    const moved = new URL(url);
    moved.protocol = scheme;
    return moved;
  }
}

/**
 * The pieces a watched body is handed over in. Small enough that a slow link takes one well within the
 * silence timeout (4.4 KiB/s at 60 s: a whole 1 MiB file chunk would need 17 KiB/s), and above the socket's
 * 16–64 KiB high-water mark, so undici still waits for 'drain' before it asks for the next piece, and the file
 * buffer behind them is not read into while a piece of it waits to be sent.
 */
const WATCHED_PIECE = 256 * 1024;

/**
 * A streamed request body whose request is aborted (`signal`) when the socket takes no piece of it for
 * `timeoutMs`: undici asks for the next piece once the last one is written out (after 'drain' when the socket
 * was full), so the wait between two asks is how long the receiver took nothing. `stop` ends the watch once an
 * answer came (a server may answer before it read the whole body).
 */
function watchedBody(
  body: AsyncIterable<Buffer>,
  timeoutMs: number,
): { body: AsyncIterable<Buffer>; signal: AbortSignal; stop: () => void } {
  const abort = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const stop = () => {
    stopped = true;
    clearTimeout(timer);
  };
  const stalled = () =>
    abort.abort(
      Object.assign(new Error(`no piece of the body taken for ${timeoutMs} ms`), { code: SEND_STALLED }),
    );
  async function* watched(): AsyncGenerator<Buffer, void, undefined> {
    try {
      for await (const chunk of body) {
        for (let at = 0; at < chunk.length; at += WATCHED_PIECE) {
          if (!stopped) timer = setTimeout(stalled, timeoutMs);
          yield chunk.subarray(at, at + WATCHED_PIECE);
          clearTimeout(timer);
        }
      }
    } finally {
      clearTimeout(timer);
    }
  }
  return { body: watched(), signal: abort.signal, stop };
}
