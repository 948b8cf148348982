/**
 * The HTTP proxy the environment announces, read once and applied the way skopeo and podman do it (Go's
 * golang.org/x/net/http/httpproxy, behind net/http's ProxyFromEnvironment), so our own HTTP clients go where
 * the tools users compare us with go:
 *
 * - `HTTPS_PROXY` for https targets, `HTTP_PROXY` for http ones (no fallback from one to the other); the upper
 *   case name wins over the lower case one; an empty value is unset. A value without a scheme is `http://`.
 * - `NO_PROXY`: comma-separated; `*` alone means no proxy at all; an IP address or a CIDR matches addresses; a
 *   host name matches itself and every name below it on label boundaries (`example.com` matches
 *   `a.example.com`, not `badexample.com`); a leading `.` (or `*.`) matches only names below it; each entry may
 *   name a port (`host:5000`, `[::1]:5000`), then only that port matches.
 * - `localhost` and loopback addresses never go through a proxy. Go's httpproxy special-cases them (and so does
 *   @actions/http-client): a local registry or cache double is never something a company proxy can reach.
 *
 * https targets go through a CONNECT tunnel (TLS to the target inside it, with the target's own TLS settings);
 * http targets are sent to the proxy in absolute form (`GET http://host/path`), as Go does. User and password in
 * the proxy URL become `Proxy-Authorization: Basic`; the password is a secret (maskProxyCredentials), and the
 * proxy is named as scheme://host:port only.
 */
import { BlockList, connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { domainToASCII } from 'node:url';
import {
  Agent,
  buildConnector,
  DecoratorHandler,
  fetch,
  getGlobalDispatcher,
  type Dispatcher,
  type Response,
} from 'undici';
import type { Host } from './host.js';
import { externalText } from './oci/response.js';
import { ActionError } from './run.js';

/** The variables read, in precedence order per purpose; child processes keep them (exec.ts). */
export const PROXY_ENV_VARS: readonly string[] = [
  'HTTPS_PROXY',
  'https_proxy',
  'HTTP_PROXY',
  'http_proxy',
  'NO_PROXY',
  'no_proxy',
];

export interface ProxyServer {
  /** scheme://host:port, without credentials: what logs and errors say. */
  readonly name: string;
  /** The variable it came from, for advice in errors. */
  readonly variable: string;
  readonly protocol: string;
  readonly hostname: string;
  readonly port: number;
  /** `Basic ...` when the URL holds a user (Go sends one for a user without password too). */
  readonly authorization?: string;
  /** The password and the encoded forms it may appear in: all secrets. */
  readonly secrets: readonly string[];
}

interface NoProxyEntry {
  /** `.example.com`: matched as a suffix; `example.com` itself too when `matchHost`. */
  domain?: { suffix: string; matchHost: boolean };
  addresses?: BlockList;
  port?: string;
}

export interface ProxySettings {
  readonly https?: ProxyServer;
  readonly http?: ProxyServer;
  readonly noProxy: readonly NoProxyEntry[];
  readonly noProxyAll: boolean;
}

/** What a connection is for: undici's connect options and URLs both have these. */
export interface ProxyTarget {
  protocol: string;
  /** As a URL writes it; an IPv6 address may be in brackets. */
  hostname: string;
  /** '' or undefined for the scheme's default. */
  port?: string | number | null;
}

/** A proxy refused or failed: names the proxy (never its credentials) and the status. */
export class ProxyError extends ActionError {
  constructor(
    message: string,
    readonly status: number | undefined,
    /** The proxy's 502/503/504, or no connection to it: worth another try, like a registry's 5xx. */
    readonly retryable: boolean,
  ) {
    super(message);
    this.name = 'ProxyError';
  }
}

function envAny(
  env: NodeJS.ProcessEnv,
  names: readonly string[],
): { name: string; value: string } | undefined {
  for (const name of names) {
    const value = env[name];
    if (value) return { name, value };
  }
  return undefined;
}

function parseProxy(variable: string, value: string): ProxyServer | undefined {
  let url: URL | undefined;
  try {
    url = new URL(value);
  } catch {
    url = undefined;
  }
  // Go: a value that is no http/https/socks5 URL is tried again as http://value.
  if (!url || !['http:', 'https:', 'socks5:'].includes(url.protocol)) {
    try {
      url = new URL(`http://${value}`);
    } catch {
      return undefined; // Go ignores a proxy value it cannot parse
    }
  }
  const port = Number(url.port || (url.protocol === 'https:' ? 443 : url.protocol === 'socks5:' ? 1080 : 80));
  let credentials: UrlCredentials | undefined;
  try {
    credentials = urlCredentials(url);
  } catch {
    // A malformed %-escape (`p%zz`): Go's url.Parse refuses the URL, and httpproxy ignores the variable. Thrown
    // here it was a URIError before any step ran, with the password not yet masked.
    return undefined;
  }
  return {
    name: `${url.protocol}//${url.hostname}:${port}`,
    variable,
    protocol: url.protocol,
    hostname: url.hostname.replace(/^\[|\]$/g, ''),
    port,
    authorization: credentials?.authorization,
    secrets: credentials?.secrets ?? [],
  };
}

export interface UrlCredentials {
  /** `Basic …` of the user and password. */
  authorization: string;
  /** What to mask: the password as written and decoded, and the Basic value. */
  secrets: string[];
}

/**
 * A URL's `user:password@` as a Basic Authorization, as curl and Go send it; undefined without one. Throws a
 * URIError on a malformed %-escape (`p%zz`), which the caller turns into its own refusal.
 */
export function urlCredentials(url: URL): UrlCredentials | undefined {
  if (!url.username && !url.password) return undefined;
  const user = decodeURIComponent(url.username);
  const password = decodeURIComponent(url.password);
  const basic = Buffer.from(`${user}:${password}`).toString('base64');
  const secrets = [basic];
  if (password) secrets.push(password, url.password);
  return { authorization: `Basic ${basic}`, secrets: [...new Set(secrets)] };
}

function parseNoProxy(value: string): { entries: NoProxyEntry[]; all: boolean } {
  const entries: NoProxyEntry[] = [];
  for (const raw of value.split(',')) {
    const p = raw.trim().toLowerCase();
    if (!p) continue;
    if (p === '*') return { entries: [], all: true };
    const cidr = /^(.+)\/(\d{1,3})$/.exec(p);
    if (cidr && isIP(cidr[1]!)) {
      const addresses = new BlockList();
      const family = isIP(cidr[1]!) === 6 ? 'ipv6' : 'ipv4';
      try {
        addresses.addSubnet(cidr[1]!, Number(cidr[2]), family);
      } catch {
        continue; // a prefix past the address size: Go ignores it too
      }
      entries.push({ addresses });
      continue;
    }
    let host = p;
    let port: string | undefined;
    // An empty port (`host:`) is no port, as Go's SplitHostPort reads it: the entry matches every port.
    const bracketed = /^\[([^\]]+)\](?::(\d*))?$/.exec(p);
    const withPort = /^([^:]+):(\d*)$/.exec(p);
    if (bracketed) [, host = '', port] = bracketed;
    else if (withPort) [, host = '', port] = withPort;
    port ||= undefined;
    if (!host) continue;
    const family = isIP(host);
    if (family) {
      const addresses = new BlockList();
      addresses.addAddress(host, family === 6 ? 'ipv6' : 'ipv4');
      entries.push({ addresses, port });
      continue;
    }
    if (host.startsWith('*.')) host = host.slice(1);
    const matchHost = !host.startsWith('.');
    const suffix = domainToASCII(matchHost ? `.${host}` : host) || (matchHost ? `.${host}` : host);
    entries.push({ domain: { suffix, matchHost }, port });
  }
  return { entries, all: false };
}

/** The proxy settings `env` announces. */
export function readProxySettings(env: NodeJS.ProcessEnv = process.env): ProxySettings {
  const https = envAny(env, ['HTTPS_PROXY', 'https_proxy']);
  const http = envAny(env, ['HTTP_PROXY', 'http_proxy']);
  const noProxy = parseNoProxy(envAny(env, ['NO_PROXY', 'no_proxy'])?.value ?? '');
  return {
    https: https && parseProxy(https.name, https.value),
    http: http && parseProxy(http.name, http.value),
    noProxy: noProxy.entries,
    noProxyAll: noProxy.all,
  };
}

let processSettings: ProxySettings | undefined;

/** This process's settings, read from its environment on first use (as Go's ProxyFromEnvironment does). */
export function proxySettings(): ProxySettings {
  return (processSettings ??= readProxySettings());
}

function defaultPort(protocol: string): string {
  return protocol === 'https:' ? '443' : '80';
}

/** Whether a connection to `target` goes through a proxy, and which. */
export function proxyFor(
  target: ProxyTarget,
  settings: ProxySettings = proxySettings(),
): ProxyServer | undefined {
  const proxy =
    target.protocol === 'https:' ? settings.https : target.protocol === 'http:' ? settings.http : undefined;
  if (!proxy || settings.noProxyAll) return undefined;
  const host = target.hostname.replace(/^\[|\]$/g, '').toLowerCase();
  const port = String(target.port || defaultPort(target.protocol));
  if (host === 'localhost') return undefined;
  const family = isIP(host);
  if (family && isLoopback(host, family)) return undefined;
  for (const entry of settings.noProxy) {
    if (entry.port && entry.port !== port) continue;
    if (entry.addresses && family && entry.addresses.check(host, family === 6 ? 'ipv6' : 'ipv4'))
      return undefined;
    // Go's domainMatch never matches an address: NO_PROXY=2.3 is no suffix of 10.1.2.3.
    if (entry.domain && !family) {
      const { suffix, matchHost } = entry.domain;
      if (host.endsWith(suffix) || (matchHost && host === suffix.slice(1))) return undefined;
    }
  }
  return proxy;
}

const LOOPBACK = (() => {
  const list = new BlockList();
  list.addSubnet('127.0.0.0', 8, 'ipv4');
  list.addAddress('::1', 'ipv6');
  list.addSubnet('::ffff:127.0.0.0', 104, 'ipv6');
  return list;
})();

function isLoopback(address: string, family: number): boolean {
  return LOOPBACK.check(address, family === 6 ? 'ipv6' : 'ipv4');
}

/** Masks every proxy password the environment holds, before anything can print one. */
export function maskProxyCredentials(host: Pick<Host, 'setSecret'>, settings = proxySettings()): void {
  for (const proxy of [settings.https, settings.http])
    for (const secret of proxy?.secrets ?? []) host.setSecret(secret);
}

/** An http:// or https:// proxy, the kinds that take absolute-form requests and CONNECT (socks5 does not). */
export function speaksHttp(proxy: ProxyServer): boolean {
  return proxy.protocol === 'http:' || proxy.protocol === 'https:';
}

export function unsupportedProxy(proxy: ProxyServer): ProxyError {
  return new ProxyError(
    `proxy ${proxy.name} (${proxy.variable}): only http:// and https:// proxies are supported.`,
    undefined,
    false,
  );
}

/** host:port as a request target writes it (IPv6 in brackets). */
function authority(hostname: string, port: string | number): string {
  const bare = hostname.replace(/^\[|\]$/g, '');
  return `${isIP(bare) === 6 ? `[${bare}]` : bare}:${port}`;
}

/** What a proxy's refusal status means, with the fix where there is one. */
export function proxyRefusal(
  proxy: ProxyServer,
  status: number,
  statusText: string,
  target: string,
): ProxyError {
  const reason = externalText(`${status} ${statusText}`.trim(), 100);
  const hint =
    status === 407
      ? proxy.authorization
        ? ` (the proxy refused the user and password in ${proxy.variable})`
        : ` (the proxy wants a user and password: put them in ${proxy.variable} as http://user:password@host:port)`
      : status === 403
        ? ' (the proxy does not allow this destination: ask its admin, or list the host in NO_PROXY if it is reachable directly)'
        : '';
  return new ProxyError(
    `proxy ${proxy.name} refused ${target}: HTTP ${reason}${hint}`,
    status,
    [502, 503, 504].includes(status),
  );
}

const MAX_CONNECT_ANSWER = 16 * 1024;

/**
 * A socket to `target` through `proxy` (a CONNECT tunnel), ready for TLS or plain HTTP. Bounded by `timeoutMs`
 * from the connection attempt to the end of the proxy's answer, as a whole: an idle timeout would let a proxy
 * that drips its header block a byte at a time hold the job for days.
 */
export function openTunnel(
  proxy: ProxyServer,
  target: { hostname: string; port: string | number },
  timeoutMs: number,
  /** Gives up the tunnel not yet open (its socket and timer would otherwise outlive the caller). */
  signal?: AbortSignal,
): Promise<Socket> {
  const where = authority(target.hostname, target.port);
  if (!speaksHttp(proxy)) {
    return Promise.reject(unsupportedProxy(proxy));
  }
  return new Promise((resolve, reject) => {
    const socket =
      proxy.protocol === 'https:'
        ? tlsConnect({
            host: proxy.hostname,
            port: proxy.port,
            servername: isIP(proxy.hostname) ? undefined : proxy.hostname,
          })
        : netConnect({ host: proxy.hostname, port: proxy.port });
    let answer = Buffer.alloc(0);
    const settle = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.off('readable', onReadable);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    const fail = (error: Error) => {
      settle();
      socket.destroy();
      reject(error);
    };
    const onReadable = () => {
      let chunk: Buffer | null;
      while ((chunk = socket.read() as Buffer | null) !== null) {
        answer = Buffer.concat([answer, chunk]);
        // Lines end in LF with an optional CR before it, as Go's textproto reads them (skopeo takes such a
        // proxy): waiting for a CRLF CRLF that never comes only ended in the timeout, tried again and again.
        const text = answer.toString('latin1');
        const blank = /\n\r?\n/.exec(text);
        if (!blank) {
          if (answer.length > MAX_CONNECT_ANSWER) {
            fail(
              new ProxyError(
                `proxy ${proxy.name}: its answer to CONNECT ${where} is too large.`,
                undefined,
                false,
              ),
            );
            return;
          }
          continue;
        }
        settle();
        const statusLine = text.slice(0, blank.index).split('\n', 1)[0]!.replace(/\r$/, '');
        // The whole status line: `HTTP/1.1 2000` is no 200 (Go refuses it too).
        const status = /^HTTP\/\d(?:\.\d)? (\d{3})(?: (.*))?$/.exec(statusLine);
        if (!status) {
          fail(
            new ProxyError(`proxy ${proxy.name} did not answer CONNECT ${where} in HTTP.`, undefined, false),
          );
          return;
        }
        if (status[1] !== '200') {
          fail(proxyRefusal(proxy, Number(status[1]), status[2] ?? '', `CONNECT ${where}`));
          return;
        }
        // Bytes that came with the 200 are the proxy's, not the target's (a 2xx to CONNECT has no content, and
        // the TLS server inside the tunnel does not speak first): dropped, as Go drops them. Passed on, they were
        // a TLS error blamed on the registry.
        // Whoever takes the socket listens for its errors; until then (and for a TLS session wrapped around
        // it, which reports them itself) one must not end the process.
        socket.on('error', () => undefined);
        resolve(socket);
        return;
      }
    };
    const onError = (error: Error) =>
      fail(
        new ProxyError(
          `cannot reach proxy ${proxy.name} (${proxy.variable}): ${externalText(error.message, 200)}`,
          undefined,
          true,
        ),
      );
    // A proxy that hangs up without (a whole) answer raises no error: without this the promise never settled.
    const onClose = () =>
      fail(
        new ProxyError(
          `proxy ${proxy.name} closed the connection before answering CONNECT ${where}`,
          undefined,
          true,
        ),
      );
    const timer = setTimeout(
      () =>
        fail(
          new ProxyError(
            `proxy ${proxy.name}: no answer to CONNECT ${where} within ${Math.round(timeoutMs / 100) / 10} s`,
            undefined,
            true,
          ),
        ),
      timeoutMs,
    );
    // The caller's reason, as for any request it gave up.
    const onAbort = () =>
      fail(
        signal?.reason instanceof Error
          ? signal.reason
          : new ProxyError(`CONNECT ${where} through proxy ${proxy.name}: given up`, undefined, false),
      );
    if (signal?.aborted) {
      onAbort();
      return;
    }
    signal?.addEventListener('abort', onAbort, { once: true });
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.once(proxy.protocol === 'https:' ? 'secureConnect' : 'connect', () => {
      const auth = proxy.authorization ? `Proxy-Authorization: ${proxy.authorization}\r\n` : '';
      socket.write(`CONNECT ${where} HTTP/1.1\r\nHost: ${where}\r\n${auth}\r\n`);
    });
    socket.on('readable', onReadable);
  });
}

function isProxyOrigin(
  options: { protocol: string; hostname: string; port?: string | number | null },
  settings: ProxySettings,
): boolean {
  const port = Number(options.port || defaultPort(options.protocol));
  const host = options.hostname.replace(/^\[|\]$/g, '');
  return [settings.https, settings.http].some(
    (p) => p && p.protocol === options.protocol && p.hostname === host && p.port === port,
  );
}

/**
 * undici's connector through the proxy where one applies: a CONNECT tunnel, then `connect` (the caller's TLS
 * settings) over it for https. Connections to the proxy itself (absolute-form requests, see forwardHttp) are
 * plain connections with default TLS.
 */
export function proxyConnector(
  connect: buildConnector.connector,
  timeoutMs: number,
  settings: ProxySettings = proxySettings(),
): buildConnector.connector {
  const toProxy = buildConnector({ timeout: timeoutMs });
  return (options, callback) => {
    if (isProxyOrigin(options, settings)) return toProxy(options, callback);
    const proxy = proxyFor(options, settings);
    if (!proxy) return connect(options, callback);
    const port = options.port || defaultPort(options.protocol);
    openTunnel(proxy, { hostname: options.hostname, port }, timeoutMs).then(
      (socket) => {
        if (options.protocol !== 'https:') return callback(null, socket);
        connect({ ...options, httpSocket: socket }, callback);
      },
      (error: Error) => callback(error, null),
    );
  };
}

/**
 * An interceptor that sends requests for http targets to their proxy in absolute form (Go's way: no tunnel, so
 * a proxy that allows CONNECT only to 443 still carries them), with the proxy's credentials.
 */
export function forwardHttp(
  settings: ProxySettings = proxySettings(),
): Dispatcher.DispatcherComposeInterceptor {
  return (dispatch) => (options, handler) => {
    const origin = new URL(String(options.origin));
    const proxy = origin.protocol === 'http:' ? proxyFor(origin, settings) : undefined;
    // Other proxies get no request of ours: the connector reports them unsupported.
    if (!proxy || !speaksHttp(proxy)) return dispatch(options, handler);
    const extra: Record<string, string> = { host: origin.host };
    if (proxy.authorization) extra['proxy-authorization'] = proxy.authorization;
    const headers = options.headers;
    const merged = Array.isArray(headers)
      ? [...(headers as string[]), ...Object.entries(extra).flat()]
      : { ...(headers as Record<string, string> | null | undefined), ...extra };
    return dispatch(
      {
        ...options,
        origin: `${proxy.protocol}//${authority(proxy.hostname, proxy.port)}`,
        path: `${origin.origin}${options.path}`,
        headers: merged,
      },
      new ProxyAnswerFilter(handler, proxy, origin.origin),
    );
  };
}

/**
 * A 407 can only be the proxy's (a server has no say about proxy credentials): an error naming the proxy, not
 * an answer. fetch would make it "fetch failed" without a cause, as the Fetch standard turns 407 into a network
 * error. Thrown from onHeaders, undici aborts the request with it.
 */
class ProxyAnswerFilter extends DecoratorHandler {
  constructor(
    private readonly handler: Dispatcher.DispatchHandlers,
    private readonly proxy: ProxyServer,
    private readonly target: string,
  ) {
    super(handler);
  }

  onHeaders(statusCode: number, headers: Buffer[], resume: () => void, statusText: string): boolean {
    if (statusCode === 407) throw proxyRefusal(this.proxy, statusCode, statusText, this.target);
    return this.handler.onHeaders?.(statusCode, headers, resume, statusText) ?? true;
  }
}

/** A proxy's own refusal of an absolute-form request (407), as an error naming it; undefined otherwise. */
export function forwardRefusal(
  url: URL,
  status: number,
  statusText: string,
  settings = proxySettings(),
): ProxyError | undefined {
  if (status !== 407 || url.protocol !== 'http:') return undefined;
  const proxy = proxyFor(url, settings);
  return proxy && proxyRefusal(proxy, status, statusText, `${url.origin}`);
}

/** An undici dispatcher for plain requests (no per-target TLS) that honours the proxy settings. */
function proxiedAgent(timeoutMs: number, settings: ProxySettings = proxySettings()): Dispatcher {
  return new Agent({
    headersTimeout: timeoutMs,
    bodyTimeout: timeoutMs,
    connect: proxyConnector(buildConnector({ timeout: timeoutMs }), timeoutMs, settings),
  }).compose(forwardHttp(settings));
}

/** Where a response's Content-Encoding goes when the body is taken as sent (see keepEncoding). */
export const SENT_ENCODING_HEADER = 'x-image-ci-content-encoding';

/**
 * An interceptor that moves a response's Content-Encoding to SENT_ENCODING_HEADER, so that fetch, which has no
 * switch for it, does not decode the body: a download keeps the bytes the server sent, as @actions/tool-cache,
 * curl and wget do. A `.raw.gz` that a mirror labels `Content-Encoding: gzip` (Apache's `AddEncoding x-gzip .gz`,
 * an S3 object with that metadata) is the file itself; decoded, it no longer matched its published sha256.
 */
function keepEncoding(): Dispatcher.DispatcherComposeInterceptor {
  return (dispatch) => (options, handler) => dispatch(options, new EncodingKeeper(handler));
}

class EncodingKeeper extends DecoratorHandler {
  constructor(private readonly handler: Dispatcher.DispatchHandlers) {
    super(handler);
  }

  onHeaders(statusCode: number, headers: Buffer[], resume: () => void, statusText: string): boolean {
    const renamed = headers.map((value, i) =>
      i % 2 === 0 && String(value).toLowerCase() === 'content-encoding'
        ? Buffer.from(SENT_ENCODING_HEADER)
        : value,
    );
    return this.handler.onHeaders?.(statusCode, renamed, resume, statusText) ?? true;
  }
}

/** A fetch with a method, headers and a text body at most; what withProxiedFetch lends. */
export type ProxiedFetch = (
  url: string | URL,
  init: {
    method?: string;
    headers?: Record<string, string>;
    body?: string;
    signal?: AbortSignal;
    redirect?: 'follow' | 'manual';
  },
) => Promise<Response>;

/** The body as text, or undefined (and the transfer stopped) once it is longer than `max` bytes, chunked or not. */
export async function readCapped(response: Response, max: number): Promise<string | undefined> {
  if (Number(response.headers.get('content-length') ?? 0) > max) {
    await response.body?.cancel();
    return undefined;
  }
  const chunks: Uint8Array[] = [];
  let length = 0;
  // Leaving the loop early cancels the body: the connection is closed, not read to its end.
  for await (const chunk of response.body ?? []) {
    length += chunk.length;
    if (length > max) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/**
 * Runs `use` with a fetch that honours the proxy settings, for requests silent for at most `timeoutMs` at a time
 * (undici's timeouts are idle ones: the wait for the headers, or between two pieces of a body). Without a proxy
 * that fetch is node's own, as before proxies were honoured; with one, it goes through a dispatcher of its own,
 * ended afterwards without waiting: out of file descriptors, a connect that never calls back keeps undici's
 * destroy() pending for good, and awaiting it (or, it seems, using our dispatcher at all there) hung a cache
 * restore instead of letting it fall back. `bodyAsSent`: a body is never decoded (keepEncoding), for downloads.
 */
export async function withProxiedFetch<T>(
  timeoutMs: number,
  use: (fetch: ProxiedFetch) => Promise<T>,
  settings: ProxySettings = proxySettings(),
  { bodyAsSent = false }: { bodyAsSent?: boolean } = {},
): Promise<T> {
  if ((!settings.https && !settings.http) || settings.noProxyAll) {
    if (!bodyAsSent) return use((url, init) => globalThis.fetch(url, init) as unknown as Promise<Response>);
    // node's own dispatcher, composed (nothing of ours to end afterwards).
    const dispatcher = getGlobalDispatcher().compose(keepEncoding());
    return use(
      (url, init) =>
        globalThis.fetch(url, { ...init, dispatcher } as RequestInit) as unknown as Promise<Response>,
    );
  }
  const proxied = proxiedAgent(timeoutMs, settings);
  const dispatcher = bodyAsSent ? proxied.compose(keepEncoding()) : proxied;
  try {
    return await use((url, init) => fetch(url, { ...init, dispatcher }));
  } finally {
    proxied.destroy().catch(() => undefined);
  }
}
