/**
 * A registry client on Node's fetch, speaking the OCI distribution API: the WWW-Authenticate challenge flow
 * (Basic, or Bearer tokens fetched per scope and cached), manifest and blob HEAD/GET, cross-repository mounts,
 * monolithic and chunked uploads, and manifest PUT with multi-tag. Every request has a timeout; 429/5xx and
 * network failures are retried with backoff; every digest is verified.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { randomBytes } from 'node:crypto';
import type { Credential } from '../auth.js';
import { sleep } from '../process.js';
import { parseChallenge, type Challenge } from './challenge.js';
import { DigestMismatchError, HashingStream, hashDigest, newHash, verifyDigest, digestOf } from './digest.js';
import { parseOciError, RegistryError } from './errors.js';
import { MANIFEST_MEDIA_TYPES } from './media-types.js';
import { isValidDigest, registryApiHost } from './reference.js';
import {
  backoffDelay,
  DEFAULT_RETRY,
  isRetryableStatus,
  parseRetryAfter,
  type RetryPolicy,
} from './retry.js';

export interface RegistryClientOptions {
  /** host[:port] as in an image reference (`docker.io` is reached at its API host). */
  registry: string;
  /** Plain http instead of https. */
  insecure?: boolean;
  credentials?: Credential;
  /** Called with every new bearer token so the caller can mask it. */
  onToken?: (token: string) => void;
  /** Per-request timeout for small requests; blob transfers get more time in proportion to their size. */
  timeoutMs?: number;
  /** Retries after the first try for 429/5xx and network failures. */
  retries?: number;
  /** First backoff step; tests shorten it. */
  retryBaseDelayMs?: number;
  userAgent?: string;
}

export interface BlobFile {
  digest: string;
  size: number;
  path: string;
}

export interface UploadOptions {
  /** 0 (or a size >= the blob) uploads in one PUT; otherwise PATCH chunks of this many bytes. */
  chunkSize?: number;
  /** An upload session the registry already opened (a mount answered 202). */
  location?: URL;
  onProgress?: (bytes: number) => void;
}

export interface ClientStats {
  requests: number;
  /** Blob bytes the registry accepted (a retried upload counts once). */
  bytesUploaded: number;
  retries: number;
}

type Scheme = 'none' | 'basic' | 'bearer';

interface RequestSpec {
  method: string;
  url: URL;
  /** Token scopes this request needs, e.g. `repository:a/b:pull,push`. */
  scopes: readonly string[];
  headers?: Record<string, string>;
  body?: Buffer | (() => Readable);
  /** Statuses the caller handles; anything else becomes a RegistryError. */
  ok: readonly number[];
  /** What the request is for, in error messages ("HEAD blob sha256:... in repo"). */
  what: string;
  /** Retry 429/5xx/network failures here; off for streamed uploads, which retry as a whole. */
  retry?: boolean;
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 60_000;
/** Large reads: fewer, bigger writes to the socket when streaming blobs. */
const READ_CHUNK = 1024 * 1024;
/** Blob transfers may take this long per byte on top of the base timeout (a floor of 256 KiB/s). */
const MIN_TRANSFER_BYTES_PER_MS = 256;
/** Renew a cached token this long before it expires, so a request never races its expiry. */
const TOKEN_EXPIRY_MARGIN_MS = 20_000;
const DEFAULT_TOKEN_LIFETIME_S = 60;

export function pullScope(repository: string): string {
  return `repository:${repository}:pull`;
}

export function pushScope(repository: string): string {
  return `repository:${repository}:pull,push`;
}

export class RegistryClient {
  readonly registry: string;
  readonly stats: ClientStats = { requests: 0, bytesUploaded: 0, retries: 0 };
  private readonly base: string;
  private readonly timeoutMs: number;
  private readonly policy: RetryPolicy;
  private readonly userAgent: string;
  private scheme: Scheme | undefined;
  private bearer: { realm: string; service?: string } | undefined;
  private readonly tokens = new Map<string, Promise<{ token: string; expiresAt: number }>>();

  constructor(private readonly options: RegistryClientOptions) {
    this.registry = options.registry;
    this.base = `${options.insecure ? 'http' : 'https'}://${registryApiHost(options.registry)}/v2/`;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.policy = {
      ...DEFAULT_RETRY,
      retries: options.retries ?? DEFAULT_RETRY.retries,
      baseDelayMs: options.retryBaseDelayMs ?? DEFAULT_RETRY.baseDelayMs,
    };
    this.userAgent = options.userAgent ?? 'image-ci-actions';
  }

  private url(path: string): URL {
    return new URL(path, this.base);
  }

  // ---- pull side ----

  async headManifest(
    repository: string,
    reference: string,
    accept: readonly string[] = MANIFEST_MEDIA_TYPES,
  ): Promise<{ digest: string; mediaType: string; size: number } | undefined> {
    const response = await this.send({
      method: 'HEAD',
      url: this.url(`${repository}/manifests/${reference}`),
      scopes: [pullScope(repository)],
      headers: { accept: accept.join(', ') },
      ok: [200, 404],
      what: `HEAD manifest ${repository}:${reference}`,
    });
    if (response.status === 404) return undefined;
    const digest = response.headers.get('docker-content-digest');
    if (!digest) {
      throw new RegistryError(`HEAD manifest ${repository}:${reference}: the registry sent no digest.`);
    }
    if (isValidDigest(reference) && digest !== reference) {
      throw new DigestMismatchError(`manifest ${repository}@${reference}`, reference, digest);
    }
    return {
      digest,
      mediaType: contentType(response),
      size: Number(response.headers.get('content-length') ?? '0'),
    };
  }

  async getManifest(
    repository: string,
    reference: string,
    accept: readonly string[] = MANIFEST_MEDIA_TYPES,
  ): Promise<{ bytes: Buffer; mediaType: string; digest: string }> {
    const what = `GET manifest ${repository}:${reference}`;
    const response = await this.send({
      method: 'GET',
      url: this.url(`${repository}/manifests/${reference}`),
      scopes: [pullScope(repository)],
      headers: { accept: accept.join(', ') },
      ok: [200],
      what,
    });
    const bytes = Buffer.from(await response.arrayBuffer());
    let digest: string;
    if (isValidDigest(reference)) {
      verifyDigest(`manifest ${repository}@${reference}`, bytes, reference);
      digest = reference;
    } else {
      const claimed = response.headers.get('docker-content-digest');
      digest = claimed ?? digestOf(bytes);
      if (claimed) verifyDigest(`manifest ${repository}:${reference}`, bytes, claimed);
    }
    return { bytes, mediaType: contentType(response), digest };
  }

  async headBlob(repository: string, digest: string): Promise<{ size: number } | undefined> {
    const response = await this.send({
      method: 'HEAD',
      url: this.url(`${repository}/blobs/${digest}`),
      scopes: [pullScope(repository)],
      ok: [200, 404],
      what: `HEAD blob ${digest} in ${repository}`,
    });
    if (response.status === 404) return undefined;
    return { size: Number(response.headers.get('content-length') ?? '0') };
  }

  /** Streams a blob into a temp file beside destPath, verifies its digest, then renames it into place. */
  async downloadBlob(
    repository: string,
    digest: string,
    destPath: string,
    options: { onProgress?: (bytes: number) => void } = {},
  ): Promise<{ size: number }> {
    const what = `GET blob ${digest} from ${repository}`;
    for (let attempt = 0; ; attempt++) {
      const temp = join(dirname(destPath), `.${basename(destPath)}.${randomBytes(4).toString('hex')}.part`);
      try {
        const response = await this.send({
          method: 'GET',
          url: this.url(`${repository}/blobs/${digest}`),
          scopes: [pullScope(repository)],
          ok: [200],
          what,
          timeoutMs: this.transferTimeout(0),
        });
        if (!response.body) throw new RegistryError(`${what}: empty response.`);
        const hash = newHash(digest);
        let size = 0;
        await pipeline(
          Readable.fromWeb(response.body as unknown as WebReadableStream<Uint8Array>),
          new HashingStream(hash, (n) => {
            size += n;
            options.onProgress?.(n);
          }),
          createWriteStream(temp, { mode: 0o644 }),
        );
        const actual = hashDigest(hash, digest);
        if (actual !== digest) throw new DigestMismatchError(`blob from ${repository}`, digest, actual);
        await rename(temp, destPath);
        return { size };
      } catch (error) {
        await rm(temp, { force: true });
        if (!isTransient(error) || attempt >= this.policy.retries) throw error;
        this.stats.retries++;
        await sleep(backoffDelay(attempt, this.policy));
      }
    }
  }

  // ---- push side ----

  /**
   * Asks the registry to link a blob from another repository it holds. `mounted: false` with a location means
   * the registry opened a normal upload session instead (202); any failure means "upload it normally".
   */
  async mountBlob(
    repository: string,
    digest: string,
    fromRepository: string,
  ): Promise<{ mounted: true } | { mounted: false; location?: URL }> {
    const url = this.url(`${repository}/blobs/uploads/`);
    url.searchParams.set('mount', digest);
    url.searchParams.set('from', fromRepository);
    try {
      const response = await this.send({
        method: 'POST',
        url,
        scopes: [pushScope(repository), pullScope(fromRepository)],
        headers: { 'content-length': '0' },
        ok: [201, 202],
        what: `mount blob ${digest} from ${fromRepository} into ${repository}`,
      });
      await drain(response);
      if (response.status === 201) return { mounted: true };
      return { mounted: false, location: location(response, url) };
    } catch (error) {
      if (error instanceof RegistryError && error.status === 401) throw error;
      return { mounted: false };
    }
  }

  /** Uploads a blob from a file (one PUT or PATCH chunks), retrying the whole upload on transient failures. */
  async uploadBlob(repository: string, blob: BlobFile, options: UploadOptions = {}): Promise<void> {
    let session = options.location;
    for (let attempt = 0; ; attempt++) {
      try {
        const start = session ?? (await this.startUpload(repository));
        session = undefined;
        await this.uploadOnce(repository, blob, start, options);
        this.stats.bytesUploaded += blob.size;
        return;
      } catch (error) {
        if (!isTransient(error) || attempt >= this.policy.retries) throw error;
        this.stats.retries++;
        await sleep(
          backoffDelay(
            attempt,
            this.policy,
            error instanceof TransientError ? error.retryAfterMs : undefined,
          ),
        );
      }
    }
  }

  private async startUpload(repository: string): Promise<URL> {
    const url = this.url(`${repository}/blobs/uploads/`);
    const response = await this.send({
      method: 'POST',
      url,
      scopes: [pushScope(repository)],
      headers: { 'content-length': '0' },
      ok: [202],
      what: `start upload to ${repository}`,
    });
    await drain(response);
    return location(response, url);
  }

  private async uploadOnce(
    repository: string,
    blob: BlobFile,
    start: URL,
    options: UploadOptions,
  ): Promise<void> {
    const what = `upload blob ${blob.digest} to ${repository}`;
    const hash = newHash(blob.digest);
    const chunkSize = options.chunkSize && options.chunkSize < blob.size ? options.chunkSize : 0;
    let session = start;
    let body: (() => Readable) | undefined;
    let length = blob.size;
    if (chunkSize === 0) {
      body = () =>
        createReadStream(blob.path, { highWaterMark: READ_CHUNK }).pipe(
          new HashingStream(hash, options.onProgress),
        );
    } else {
      for (let offset = 0; offset < blob.size; offset += chunkSize) {
        const end = Math.min(blob.size, offset + chunkSize) - 1;
        const response = await this.send({
          method: 'PATCH',
          url: session,
          scopes: [pushScope(repository)],
          headers: {
            'content-type': 'application/octet-stream',
            'content-range': `${offset}-${end}`,
            'content-length': String(end - offset + 1),
          },
          body: () =>
            createReadStream(blob.path, { start: offset, end }).pipe(
              new HashingStream(hash, options.onProgress),
            ),
          ok: [202],
          what,
          retry: false,
          timeoutMs: this.transferTimeout(end - offset + 1),
        });
        await drain(response);
        session = location(response, session);
      }
      body = undefined;
      length = 0;
    }
    const put = new URL(session);
    put.searchParams.set('digest', blob.digest);
    const response = await this.send({
      method: 'PUT',
      url: put,
      scopes: [pushScope(repository)],
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(length) },
      body,
      ok: [201, 204],
      what,
      retry: false,
      timeoutMs: this.transferTimeout(length),
    });
    await drain(response);
    const actual = hashDigest(hash, blob.digest);
    if (actual !== blob.digest) throw new DigestMismatchError(`local blob ${blob.path}`, blob.digest, actual);
    const stored = response.headers.get('docker-content-digest');
    if (stored && stored !== blob.digest) throw new DigestMismatchError(what, blob.digest, stored);
  }

  /**
   * PUTs manifest bytes exactly as given. With `tags`, asks for the OCI 1.1 multi-tag PUT (`?tag=a&tag=b`);
   * `confirmedTags` lists only the tags the registry confirmed with OCI-Tag headers (a registry that ignores
   * the query confirms none, and the caller must tag one by one).
   */
  async putManifest(
    repository: string,
    reference: string,
    bytes: Buffer,
    mediaType: string,
    tags: readonly string[] = [],
  ): Promise<{ digest: string; confirmedTags: string[] }> {
    const digest = digestOf(bytes);
    if (isValidDigest(reference)) verifyDigest(`manifest for ${repository}`, bytes, reference);
    const url = this.url(`${repository}/manifests/${reference}`);
    for (const tag of tags) url.searchParams.append('tag', tag);
    const what = `PUT manifest ${repository}:${reference}`;
    const response = await this.send({
      method: 'PUT',
      url,
      scopes: [pushScope(repository)],
      headers: { 'content-type': mediaType, 'content-length': String(bytes.length) },
      body: bytes,
      ok: [201, 200, 204],
      what,
    });
    await drain(response);
    const stored = response.headers.get('docker-content-digest');
    if (stored && stored !== digest) throw new DigestMismatchError(what, digest, stored);
    const confirmed = (response.headers.get('oci-tag') ?? '')
      .split(',')
      .map((t) => t.trim())
      .filter((t) => tags.includes(t));
    return { digest, confirmedTags: confirmed };
  }

  // ---- transport ----

  private transferTimeout(bytes: number): number {
    return this.timeoutMs + Math.ceil(bytes / MIN_TRANSFER_BYTES_PER_MS);
  }

  private async send(spec: RequestSpec): Promise<Response> {
    // No GET /v2/ probe first: the first real requests (HEADs, in parallel) collect the challenge in the same
    // round trip, and later requests send credentials up front.
    const retry = spec.retry ?? true;
    const challenged = new Set<'anonymous' | 'refused'>();
    for (let attempt = 0; ;) {
      const headers = new Headers(spec.headers);
      headers.set('user-agent', this.userAgent);
      const authorization = await this.authorization(spec.scopes);
      if (authorization) headers.set('authorization', authorization);
      let response: Response;
      try {
        this.stats.requests++;
        response = await fetch(spec.url, {
          method: spec.method,
          headers,
          body: typeof spec.body === 'function' ? spec.body() : spec.body,
          duplex: 'half',
          // Blob GET/HEAD may redirect to storage; fetch drops Authorization when the origin changes.
          redirect: spec.method === 'GET' || spec.method === 'HEAD' ? 'follow' : 'manual',
          signal: AbortSignal.timeout(spec.timeoutMs ?? this.timeoutMs),
        });
      } catch (error) {
        if (retry && attempt < this.policy.retries) {
          this.stats.retries++;
          await sleep(backoffDelay(attempt++, this.policy));
          continue;
        }
        throw new TransientError(`${spec.what}: ${networkMessage(error)}`);
      }
      if (response.status === 401) {
        const challenge = parseChallenge(response.headers.get('www-authenticate'));
        await drain(response);
        // One retry to answer the first challenge, one more with a fresh token if the first one is refused.
        const retryKind = authorization === undefined ? 'anonymous' : 'refused';
        if (
          !challenged.has(retryKind) &&
          challenge &&
          this.accept(challenge, spec.scopes, retryKind === 'refused')
        ) {
          challenged.add(retryKind);
          // A streamed body is half-consumed (and half-hashed): restart the whole upload, now with a token.
          if (typeof spec.body === 'function') {
            throw new TransientError(`${spec.what}: the registry asked for new credentials mid-upload.`, 401);
          }
          continue;
        }
        throw new RegistryError(
          `${spec.what}: the registry refused access (HTTP 401)${this.options.credentials ? ` for user '${this.options.credentials.username}'` : '; no credentials were given'}.`,
          401,
          'UNAUTHORIZED',
        );
      }
      if (isRetryableStatus(response.status) && !spec.ok.includes(response.status)) {
        if (retry && attempt < this.policy.retries) {
          const wait = backoffDelay(
            attempt++,
            this.policy,
            parseRetryAfter(response.headers.get('retry-after')),
          );
          await drain(response);
          this.stats.retries++;
          await sleep(wait);
          continue;
        }
        const retryAfterMs = parseRetryAfter(response.headers.get('retry-after'));
        throw new TransientError(
          (await failureMessage(response, spec.what)).text,
          response.status,
          retryAfterMs,
        );
      }
      if (!spec.ok.includes(response.status)) {
        const message = await failureMessage(response, spec.what);
        throw new RegistryError(message.text, response.status, message.code);
      }
      return response;
    }
  }

  /** Takes note of a challenge; true when a retry with (new) credentials may succeed. */
  private accept(
    challenge: Challenge | undefined,
    scopes: readonly string[],
    hadAuthorization: boolean,
  ): boolean {
    if (!challenge) return false;
    if (challenge.scheme === 'basic') {
      if (!this.options.credentials) {
        throw new RegistryError(
          `${this.registry} requires a login: give username and password (or an auth file with this registry).`,
          401,
          'UNAUTHORIZED',
        );
      }
      const retry = this.scheme !== 'basic' || !hadAuthorization;
      this.scheme = 'basic';
      return retry;
    }
    if (challenge.scheme === 'bearer' && challenge.params.realm) {
      this.bearer = { realm: challenge.params.realm, service: challenge.params.service };
      this.scheme = 'bearer';
      // A refused token may have expired or lack a scope: forget it so the retry fetches a fresh one.
      if (hadAuthorization) this.tokens.delete(scopeKey(scopes));
      return true;
    }
    return false;
  }

  private async authorization(scopes: readonly string[]): Promise<string | undefined> {
    const credentials = this.options.credentials;
    if (this.scheme === 'basic' && credentials) {
      return `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
    }
    if (this.scheme === 'bearer' && scopes.length > 0) return `Bearer ${await this.token(scopes)}`;
    return undefined;
  }

  private async token(scopes: readonly string[]): Promise<string> {
    const key = scopeKey(scopes);
    const cached = this.tokens.get(key);
    if (cached) {
      try {
        const entry = await cached;
        if (entry.expiresAt > Date.now()) return entry.token;
      } catch {
        // a failed fetch is retried below
      }
    }
    const pending = this.fetchToken(scopes);
    this.tokens.set(key, pending);
    try {
      return (await pending).token;
    } catch (error) {
      this.tokens.delete(key);
      throw error;
    }
  }

  private async fetchToken(scopes: readonly string[]): Promise<{ token: string; expiresAt: number }> {
    const bearer = this.bearer!;
    const url = new URL(bearer.realm);
    if (bearer.service) url.searchParams.set('service', bearer.service);
    for (const scope of scopes) url.searchParams.append('scope', scope);
    const credentials = this.options.credentials;
    const headers: Record<string, string> = { 'user-agent': this.userAgent };
    if (credentials) {
      headers.authorization = `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
    }
    const what = `get a token from ${url.origin}${url.pathname}`;
    for (let attempt = 0; ; attempt++) {
      let response: Response;
      try {
        this.stats.requests++;
        response = await fetch(url, { headers, signal: AbortSignal.timeout(this.timeoutMs) });
      } catch (error) {
        if (attempt < this.policy.retries) {
          await sleep(backoffDelay(attempt, this.policy));
          continue;
        }
        throw new TransientError(`${what}: ${networkMessage(error)}`);
      }
      if (isRetryableStatus(response.status) && attempt < this.policy.retries) {
        await drain(response);
        await sleep(backoffDelay(attempt, this.policy, parseRetryAfter(response.headers.get('retry-after'))));
        continue;
      }
      if (response.status === 401 || response.status === 403) {
        await drain(response);
        throw new RegistryError(
          `${what}: the token server refused ${credentials ? `the credentials of user '${credentials.username}'` : 'anonymous access'} (HTTP ${response.status}).`,
          response.status,
          'UNAUTHORIZED',
        );
      }
      if (response.status !== 200) {
        const message = await failureMessage(response, what);
        throw new RegistryError(message.text, response.status, message.code);
      }
      const body = (await response.json()) as { token?: string; access_token?: string; expires_in?: number };
      const token = body.token ?? body.access_token;
      if (!token) throw new RegistryError(`${what}: the answer holds no token.`);
      this.options.onToken?.(token);
      const lifetimeMs = (body.expires_in ?? DEFAULT_TOKEN_LIFETIME_S) * 1000;
      return { token, expiresAt: Date.now() + Math.max(lifetimeMs - TOKEN_EXPIRY_MARGIN_MS, lifetimeMs / 2) };
    }
  }
}

/** A failure worth retrying (network error, timeout, 429/5xx after the request's own retries). */
export class TransientError extends RegistryError {
  constructor(
    message: string,
    status?: number,
    /** The server's Retry-After, for the caller that retries the whole operation. */
    readonly retryAfterMs?: number,
  ) {
    super(message, status);
    this.name = 'TransientError';
  }
}

function isTransient(error: unknown): boolean {
  if (error instanceof TransientError) return true;
  if (error instanceof RegistryError || error instanceof DigestMismatchError) return false;
  // A local file problem will not fix itself; a stream that broke mid-body (connection reset) may.
  const code =
    (error as { code?: unknown; cause?: { code?: unknown } }).code ??
    (error as { cause?: { code?: unknown } }).cause?.code;
  return !(typeof code === 'string' && ['ENOENT', 'EACCES', 'EISDIR', 'ENOSPC'].includes(code));
}

function scopeKey(scopes: readonly string[]): string {
  return [...scopes].sort().join(' ');
}

function contentType(response: Response): string {
  return (response.headers.get('content-type') ?? '').split(';')[0]!.trim();
}

/** Upload Location headers may be relative; resolve against the request URL and keep their query (state). */
function location(response: Response, requestUrl: URL): URL {
  const value = response.headers.get('location');
  if (!value) throw new RegistryError(`the registry answered ${response.status} without a Location header.`);
  return new URL(value, requestUrl);
}

async function drain(response: Response): Promise<void> {
  try {
    await response.arrayBuffer();
  } catch {
    // the body is not needed; a broken one must not hide the status we already have
  }
}

async function failureMessage(response: Response, what: string): Promise<{ text: string; code?: string }> {
  let body = '';
  try {
    body = await response.text();
  } catch {
    // keep the status line
  }
  const oci = parseOciError(body);
  const detail = oci.code ? `${oci.code}: ${oci.message ?? ''}`.trim() : response.statusText;
  return { text: `${what}: HTTP ${response.status} ${detail}`.trim(), code: oci.code };
}

function networkMessage(error: unknown): string {
  if (error instanceof Error) {
    if (error.name === 'TimeoutError') return 'timed out';
    const cause = (error as { cause?: unknown }).cause;
    return cause instanceof Error ? `${error.message} (${cause.message})` : error.message;
  }
  return String(error);
}
