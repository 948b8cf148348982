/**
 * The Actions cache lookup, as @actions/cache 6 makes it (lib/internal/cacheHttpClient.js, config.js), for
 * either service version, so entries the library saved are found and their archive can be streamed:
 *
 * - v2 (github.com): a twirp JSON POST of `GetCacheEntryDownloadURL` with the key, the restore keys and the
 *   version, answered by the matched key and a signed URL of the archive.
 * - v1 (GHES, or github.com without ACTIONS_CACHE_SERVICE_V2): `GET <ACTIONS_CACHE_URL>_apis/artifactcache/cache
 *   ?keys=<key,restore keys>&version=` with `Accept: application/json;api-version=6.0-preview.1`, answered 204
 *   on a miss and 200 with `{cacheKey, archiveLocation, ...}` on a hit.
 *
 * Outcomes are kept apart because the caller treats them differently: a miss is a miss; an outage (5xx,
 * network, timeouts, 429 after retries) would fail the library too, so it is reported, not retried through the
 * library; an answer we do not understand (4xx such as an unknown method, another 2xx, a malformed body) means
 * this service is not the one we know, and the library gets to handle it.
 */
import type { Response } from 'undici';
import type { Host } from './host.js';
import { ProxyError, readCapped, withProxiedFetch, type ProxiedFetch } from './proxy-env.js';
import { backoffDelay, type RetryPolicy } from './oci/retry.js';
import { sleep } from './process.js';
import { errorMessage } from './run.js';

export const TWIRP_SERVICE = 'github.actions.results.api.v1.CacheService';

export interface LookupRequest {
  key: string;
  restoreKeys: readonly string[];
  version: string;
}

export type LookupResult =
  | { kind: 'hit'; matchedKey: string; url: string }
  | { kind: 'miss' }
  | { kind: 'outage'; message: string }
  | { kind: 'unknown-answer'; reason: string };

/** Which service is asked, at the URL the library takes for it (config.js getCacheServiceURL). */
export type CacheService = { version: 'v2'; resultsUrl: string } | { version: 'v1'; cacheUrl: string };

export interface LookupOptions {
  service: CacheService;
  token: string;
  /** Per request. */
  timeoutMs: number;
  attempts: number;
  retry: RetryPolicy;
  /** Ends the lookup early (the caller's overall deadline). */
  signal: AbortSignal;
}

/** One lookup request of either protocol, and how its answer is read. */
interface LookupCall {
  /** The library's name for the call, in every message about it. */
  name: string;
  url: URL;
  method: 'GET' | 'POST';
  headers: Record<string, string>;
  body?: string;
  read(host: Host, status: number, text: string): LookupResult;
}

/** Answers of either service are a few hundred bytes. */
const MAX_ANSWER_BYTES = 1024 * 1024;

/** The v1 Accept header (cacheHttpClient.js createAcceptHeader): the service versions its answer by it. */
const V1_ACCEPT = 'application/json;api-version=6.0-preview.1';

export async function lookupEntry(
  host: Host,
  request: LookupRequest,
  options: LookupOptions,
): Promise<LookupResult> {
  const call =
    options.service.version === 'v2'
      ? v2Call(request, options.service.resultsUrl)
      : v1Call(request, options.service.cacheUrl);
  if (typeof call === 'string') return { kind: 'unknown-answer', reason: call };
  // The library's client (@actions/http-client) sends neither user nor password of the service URL; fetch
  // refuses such a URL outright, in an error that quotes it, password and all.
  call.url.username = '';
  call.url.password = '';
  // Through the environment's proxy, as the library's own lookup (@actions/http-client) goes.
  return withProxiedFetch(options.timeoutMs, (fetch) => lookupThrough(fetch, host, call, options));
}

function v2Call(request: LookupRequest, resultsUrl: string): LookupCall {
  const name = 'GetCacheEntryDownloadURL';
  // Field names and omissions as the library's generated client sends them (proto names, no empty list).
  const body = JSON.stringify({
    key: request.key,
    ...(request.restoreKeys.length ? { restore_keys: request.restoreKeys } : {}),
    version: request.version,
  });
  return {
    name,
    // Built like the library (`new URL('/twirp/...', base)`): a path in ACTIONS_RESULTS_URL is replaced, not kept.
    url: new URL(`/twirp/${TWIRP_SERVICE}/${name}`, resultsUrl),
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body,
    read: (host, status, text) => {
      if (status !== 200) return unknownStatus(name, status);
      const parsed = parseObject(name, text);
      if (typeof parsed === 'string') return { kind: 'unknown-answer', reason: parsed };
      if (parsed.ok !== true) return { kind: 'miss' };
      // protobuf JSON allows either the proto or the camelCase name.
      return hit(
        host,
        name,
        parsed.matched_key ?? parsed.matchedKey,
        parsed.signed_download_url ?? parsed.signedDownloadUrl,
      );
    },
  };
}

function v1Call(request: LookupRequest, cacheUrl: string): LookupCall | string {
  const name = 'getCacheEntry';
  const keys = [request.key, ...request.restoreKeys].join(',');
  let url: URL;
  try {
    // Joined as the library joins it (`${baseUrl}_apis/...`): ACTIONS_CACHE_URL ends in a slash.
    url = new URL(
      `${cacheUrl}_apis/artifactcache/cache?keys=${encodeURIComponent(keys)}&version=${request.version}`,
    );
  } catch {
    return 'the v1 cache service URL is not a URL';
  }
  return {
    name,
    url,
    method: 'GET',
    headers: { Accept: V1_ACCEPT },
    read: (host, status, text) => {
      if (status === 204) return { kind: 'miss' };
      // The library takes any 2xx; one other than 200 is not an answer we have seen.
      if (status !== 200) return unknownStatus(name, status);
      const parsed = parseObject(name, text);
      if (typeof parsed === 'string') return { kind: 'unknown-answer', reason: parsed };
      const found = hit(host, name, parsed.cacheKey, parsed.archiveLocation);
      // The library masks the whole archive location (its SAS or presigned query is a credential).
      if (found.kind === 'hit') host.setSecret(found.url);
      return found;
    },
  };
}

async function lookupThrough(
  fetch: ProxiedFetch,
  host: Host,
  call: LookupCall,
  options: LookupOptions,
): Promise<LookupResult> {
  let last = '';
  for (let attempt = 0; attempt < options.attempts && !options.signal.aborted; attempt++) {
    if (attempt > 0) await sleep(backoffDelay(attempt - 1, options.retry));
    let response: Response;
    try {
      response = await fetch(call.url, {
        method: call.method,
        headers: {
          ...call.headers,
          Authorization: `Bearer ${options.token}`,
          'User-Agent': 'image-ci-actions',
        },
        ...(call.body === undefined ? {} : { body: call.body }),
        signal: AbortSignal.any([AbortSignal.timeout(options.timeoutMs), options.signal]),
      });
    } catch (error) {
      // fetch says only "fetch failed"; a proxy's refusal (its cause) says who refused and why.
      const cause = (error as { cause?: unknown }).cause;
      if (cause instanceof ProxyError && !cause.retryable) {
        return { kind: 'outage', message: `${call.name}: ${cause.message}` };
      }
      last = `${call.name}: ${errorMessage(cause instanceof ProxyError ? cause : error)}`;
      continue;
    }
    let text: string | undefined;
    try {
      text = await readCapped(response, MAX_ANSWER_BYTES);
    } catch (error) {
      // The answer broke off (connection cut, or no end within the timeout): the network failed, not the
      // protocol. Read as an empty answer it was an unknown one, and the library, which has no timeout of its
      // own, was asked instead.
      last = `${call.name}: the answer broke off: ${errorMessage(error)}`;
      continue;
    }
    // Read whole, it could take all the memory; handed to the library, which reads answers whole, it would.
    if (text === undefined) return { kind: 'outage', message: `${call.name} answered more than 1 MiB` };
    if (response.status >= 500 || response.status === 429 || response.status === 408) {
      last = `${call.name} answered HTTP ${response.status}`;
      continue;
    }
    return call.read(host, response.status, text);
  }
  return { kind: 'outage', message: `${last} (after ${options.attempts} attempts)` };
}

function unknownStatus(name: string, status: number): LookupResult {
  return { kind: 'unknown-answer', reason: `${name} answered HTTP ${status}` };
}

/** The answer as a JSON object, or why it is not one. */
function parseObject(name: string, text: string): Record<string, unknown> | string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return `${name} answered with something other than JSON`;
  }
  // `null` or a list is JSON too, and no answer of either service.
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    return `${name} answered with JSON that is not an object`;
  }
  return parsed as Record<string, unknown>;
}

/**
 * A hit names an http(s) URL of the archive and its key, or it is no answer we know. A hit without a key (absent
 * or empty) is still a hit, with the key '' for the caller to refuse: the library would download and extract
 * its archive (tar -P, unchecked) and only then report no key, a miss.
 */
function hit(host: Host, name: string, matchedKey: unknown, url: unknown): LookupResult {
  matchedKey ??= '';
  if (typeof url !== 'string' || !url || typeof matchedKey !== 'string') {
    return { kind: 'unknown-answer', reason: `${name} answered a hit without an archive URL and key` };
  }
  let parsedUrl: URL;
  try {
    parsedUrl = new URL(url);
  } catch {
    return { kind: 'unknown-answer', reason: 'the archive URL is not a URL' };
  }
  if (parsedUrl.protocol !== 'https:' && parsedUrl.protocol !== 'http:') {
    return { kind: 'unknown-answer', reason: `the archive URL uses ${parsedUrl.protocol}` };
  }
  // The SAS signature is a credential for the archive: masked like the library masks it.
  const sig = parsedUrl.searchParams.get('sig');
  if (sig) {
    host.setSecret(sig);
    host.setSecret(encodeURIComponent(sig));
  }
  return { kind: 'hit', matchedKey, url };
}
