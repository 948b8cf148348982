/**
 * Answers as the operations see them, and failures as users read them. Everything here comes from a server:
 * bodies are read up to a limit, and text from them is cut to one short line before it reaches a message.
 */
import type { Readable } from 'node:stream';
import { STATUS_CODES } from 'node:http';
import { DecoratorHandler, type Dispatcher } from 'undici';
import { parseOciError, RegistryError } from './errors.js';
import { NOT_A_REGULAR_FILE } from '../files.js';
import { withoutSecrets } from '../secrets.js';
import { TransientError } from './retry.js';
import { errorMessage } from '../run.js';
import { ProxyError } from '../proxy-env.js';
import { formatSeconds } from '../summary.js';

export interface RegistryResponse {
  status: number;
  statusText: string;
  /** The URL that answered (after redirects): relative Locations resolve against it. */
  url: URL;
  /** A header's value; repeated headers joined with ", " as HTTP allows. */
  header(name: string): string | undefined;
  /** A header's values, one per occurrence. */
  headerList(name: string): string[];
  body: Readable;
  /** Reads the body whole, refusing more than `limit` bytes. */
  bytes(limit: number, what: string): Promise<Buffer>;
  /** Discards the body so the connection can be reused (or closes it when the body is large). */
  drain(): Promise<void>;
  /** The body's first `limit` bytes, for the words of an error answer; the rest is left unread. */
  prefix(limit: number): Promise<Buffer>;
}

/** Error bodies, token answers and manifests are small; anything larger is refused, not buffered. */
export const ERROR_BODY_LIMIT = 64 * 1024;

/**
 * `asideMs` bounds, in all, each read of a body we only drain or read for its words (an error page, a redirect's
 * page, the body of a 201). A blob request has no overall deadline, only the silence timeout: without this a
 * registry or proxy trickling its 503 page a few bytes at a time held the request until the 64 KiB limit, which
 * at a byte per silence timeout is weeks. One silence timeout for 64 KiB is the low-speed limit's 1 KiB/s.
 */
export function wrapResponse(data: Dispatcher.ResponseData, url: URL, asideMs: number): RegistryResponse {
  const list = (name: string): string[] => {
    const value = data.headers[name];
    return value === undefined ? [] : Array.isArray(value) ? value : [value];
  };
  return {
    status: data.statusCode,
    // The standard phrase: undici 6 does not keep the server's own (which would be outside text to neutralise).
    statusText: STATUS_CODES[data.statusCode] ?? '',
    url,
    header: (name) => (list(name).length > 0 ? list(name).join(', ') : undefined),
    headerList: list,
    body: data.body,
    bytes: (limit, what) => readLimited(data.body, limit, what),
    async drain() {
      try {
        await readAside(data.body, asideMs, () => data.body.dump({ limit: ERROR_BODY_LIMIT }));
      } catch {
        // the body is not needed; a broken one must not hide the status we already have
      }
    },
    prefix: (limit) => readAside(data.body, asideMs, () => readPrefix(data.body, limit)),
  };
}

/** `read` of `body`, the body destroyed (failing or ending the read) once `ms` have passed. */
async function readAside<T>(body: Readable, ms: number, read: () => Promise<T>): Promise<T> {
  const timer = setTimeout(() => body.destroy(new Error(`the answer's body took more than ${ms} ms`)), ms);
  try {
    return await read();
  } finally {
    clearTimeout(timer);
  }
}

/** Header names that are members of Object.prototype once lowercased, as undici stores them. */
const PROTOTYPE_NAMES = new Set(['constructor', '__proto__']);

function withoutPrototypeNames<T extends Buffer | string>(raw: T[]): T[] {
  const kept: T[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    if (!PROTOTYPE_NAMES.has(raw[i]!.toString().toLowerCase())) kept.push(raw[i]!, raw[i + 1]!);
  }
  return kept;
}

class PrototypeNameFilter extends DecoratorHandler {
  constructor(private readonly handler: Dispatcher.DispatchHandlers) {
    super(handler);
  }

  onHeaders(statusCode: number, headers: Buffer[], resume: () => void, statusText: string): boolean {
    return this.handler.onHeaders?.(statusCode, withoutPrototypeNames(headers), resume, statusText) ?? true;
  }

  onComplete(trailers: string[] | null): void {
    this.handler.onComplete?.(trailers && withoutPrototypeNames(trailers));
  }
}

/**
 * undici 6 collects response headers (and trailers) in a plain object and fails the whole request ("val.push is
 * not a function") on a name that is an Object.prototype member, so a server sending one could not be talked to
 * at all (fixed in undici 7 by nodejs/undici#4923, not in 6). We read no header of that name: they are dropped
 * before undici sees them.
 */
export const withoutPrototypeHeaderNames: Dispatcher.DispatcherComposeInterceptor =
  (dispatch) => (options, handler) =>
    dispatch(options, new PrototypeNameFilter(handler));

async function readLimited(body: Readable, limit: number, what: string): Promise<Buffer> {
  const bytes = await readPrefix(body, limit + 1);
  if (bytes.length > limit)
    throw new RegistryError(`${what}: the answer is larger than ${limit} bytes; refused.`);
  return bytes;
}

/**
 * The first `limit` bytes of a body, the rest left unread (the body is destroyed, closing the connection). For
 * error answers: a proxy's page with its style inline can be larger than the limit, and what it says is in its
 * head.
 */
export async function readPrefix(body: Readable, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    chunks.push(chunk as Buffer);
    size += (chunk as Buffer).length;
    if (size >= limit) break;
  }
  return Buffer.concat(chunks).subarray(0, limit);
}

/** Server text for a message: one line, printable, short. */
export function externalText(text: string, max = 200): string {
  // Secrets out before the cut: a cut secret is a prefix no mask matches.
  const flat = withoutSecrets(text);
  // Invisible format characters (bidi overrides that show a line reordered, zero-width ones) go without a trace;
  // controls, C1 included (U+009B is CSI to some terminals), become spaces. Masked again after: taking out what
  // sat inside a secret must not put it back together.
  const line = withoutSecrets(
    flat
      .replace(/\p{Cf}+/gu, '')
      .replace(/[\p{Cc}\u2028\u2029]+/gu, ' ')
      .trim(),
  );
  return line.length > max ? `${line.slice(0, max)}…` : line;
}

export async function failureMessage(
  response: RegistryResponse,
  what: string,
): Promise<{ text: string; code?: string }> {
  let body = '';
  try {
    body = (await response.prefix(ERROR_BODY_LIMIT)).toString('utf8');
  } catch {
    // keep the status line
  }
  const oci = parseOciError(body);
  const title = oci.code ? undefined : pageTitle(body);
  const detail = oci.code
    ? `${oci.code}: ${oci.message ?? ''}`
    : title && title !== `${response.status} ${response.statusText}`
      ? `${response.statusText} (its page says "${externalText(title, 100)}")`
      : response.statusText;
  return { text: externalText(`${what}: HTTP ${response.status} ${detail}`), code: oci.code };
}

/**
 * The title of an HTML error page: what a proxy in front of the registry says (nginx answers a missing client
 * certificate with 400 and "No required SSL certificate was sent"), where the status alone says nothing.
 */
function pageTitle(body: string): string | undefined {
  // [^<>] keeps the search linear on a body of unclosed '<title' tags. Entities are decoded so a secret the page
  // quotes escaped is the secret the masks know; spaces are folded so a wrapped "400 Bad Request" still repeats.
  const raw = /<title\b[^<>]*>([^<]+)<\/title\s*>/i.exec(body)?.[1];
  return raw && decodeEntities(raw).replace(/\s+/g, ' ').trim();
}

// A Map, not an object: '&constructor;' must not find Object.prototype's.
const NAMED_ENTITIES: ReadonlyMap<string, string> = new Map([
  ['amp', '&'],
  ['lt', '<'],
  ['gt', '>'],
  ['quot', '"'],
  ['apos', "'"],
  ['nbsp', ' '],
]);

function decodeEntities(text: string): string {
  return text.replace(
    /&(?:#(\d{1,7})|#x([\da-f]{1,6})|([a-z]+));/gi,
    (entity, dec?: string, hex?: string, name?: string) => {
      if (name) return NAMED_ENTITIES.get(name.toLowerCase()) ?? entity;
      const code = dec ? Number(dec) : parseInt(hex!, 16);
      return code <= 0x10ffff ? String.fromCodePoint(code) : entity;
    },
  );
}

const LOCAL_FILE_CODES = new Set([
  'ENOENT',
  'ENOTDIR',
  'ELOOP',
  'ENAMETOOLONG',
  'EACCES',
  'EISDIR',
  'ENOSPC',
  'EROFS',
  'EMFILE',
  NOT_A_REGULAR_FILE,
]);

/** The code of the error a streamed request body's watch aborts its request with (transport.ts). */
export const SEND_STALLED = 'ICI_SEND_STALLED';

/**
 * What a failed try means: a local file problem (will not fix itself) stays as it is; anything else that went
 * wrong on the way — refused or reset connections, silence past the timeout, a body cut short — is a
 * TransientError worth another try. An error we made ourselves (a RegistryError) passes through. `answerMs` is
 * how long the request waited for its answer, when that is not the silence timeout (a commit's).
 */
export function networkFailure(error: unknown, what: string, timeoutMs: number, answerMs = timeoutMs): Error {
  if (error instanceof RegistryError) return error;
  // The proxy's own words name it and say whether another try may help (its 502/503, or no connection to it).
  const cause = (error as { cause?: unknown } | undefined)?.cause;
  const proxyError = error instanceof ProxyError ? error : cause instanceof ProxyError ? cause : undefined;
  if (proxyError) {
    return proxyError.retryable
      ? new TransientError(`${what}: ${proxyError.message}`, proxyError.status)
      : new ProxyError(`${what}: ${proxyError.message}`, proxyError.status, false);
  }
  const code = errorCode(error);
  if (code && LOCAL_FILE_CODES.has(code)) return error as Error;
  const seconds = formatSeconds(timeoutMs);
  const unanswered =
    code === 'UND_ERR_HEADERS_TIMEOUT' || (error as Error | undefined)?.name === 'TimeoutError';
  const reason =
    code === 'UND_ERR_HEADERS_TIMEOUT'
      ? `no answer within ${formatSeconds(answerMs)}`
      : code === 'UND_ERR_BODY_TIMEOUT'
        ? `no data for ${seconds} (stalled)`
        : code === SEND_STALLED
          ? `the server took no data for ${seconds} (stalled)`
          : code === 'UND_ERR_CONNECT_TIMEOUT'
            ? `could not connect within ${seconds}`
            : (error as Error | undefined)?.name === 'TimeoutError'
              ? `no complete answer within ${formatSeconds(answerMs)}`
              : describe(error);
  return Object.assign(new TransientError(`${what}: ${reason}`), { unanswered });
}

function errorCode(error: unknown): string | undefined {
  const e = error as { code?: unknown; cause?: { code?: unknown } } | undefined;
  const code = e?.code ?? e?.cause?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Duck-typed like errorMessage: fetch's errors and their causes may come from another realm (vm, worker). */
function describe(error: unknown): string {
  const message = errorMessage(error);
  const cause = (error as { cause?: unknown } | null)?.cause;
  const causeMessage = cause === undefined ? undefined : errorMessage(cause);
  return externalText(causeMessage && causeMessage !== message ? `${message} (${causeMessage})` : message);
}
