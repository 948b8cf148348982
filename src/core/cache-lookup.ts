/**
 * The Actions cache service v2 lookup, as @actions/cache 6 makes it: a twirp JSON POST of
 * `GetCacheEntryDownloadURL` with the key, the restore keys and the version, answered by the matched key and a
 * signed URL of the archive. Made here (instead of through the library) so the archive can be streamed.
 *
 * Outcomes are kept apart because the caller treats them differently: a miss is a miss; an outage (5xx,
 * network, timeouts, 429 after retries) would fail the library too, so it is reported, not retried through the
 * library; an answer we do not understand (4xx such as an unknown method, a malformed body) means this service
 * is not the one we know, and the library gets to handle it.
 */
import type { Response } from 'undici';
import type { Host } from './host.js';
import { ProxyError, withProxiedFetch, type ProxiedFetch } from './proxy-env.js';
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

export interface LookupOptions {
  resultsUrl: string;
  token: string;
  /** Per request. */
  timeoutMs: number;
  attempts: number;
  retry: RetryPolicy;
  /** Ends the lookup early (the caller's overall deadline). */
  signal: AbortSignal;
}

export async function lookupEntry(
  host: Host,
  request: LookupRequest,
  options: LookupOptions,
): Promise<LookupResult> {
  // Built like the library (`new URL('/twirp/...', base)`): a path in ACTIONS_RESULTS_URL is replaced, not kept.
  const url = new URL(`/twirp/${TWIRP_SERVICE}/GetCacheEntryDownloadURL`, options.resultsUrl);
  // Field names and omissions as the library's generated client sends them (proto names, no empty list).
  const body = JSON.stringify({
    key: request.key,
    ...(request.restoreKeys.length ? { restore_keys: request.restoreKeys } : {}),
    version: request.version,
  });
  // Through the environment's proxy, as the library's own lookup (@actions/http-client) goes.
  return withProxiedFetch(options.timeoutMs, (fetch) => lookupThrough(fetch, host, url, body, options));
}

async function lookupThrough(
  fetch: ProxiedFetch,
  host: Host,
  url: URL,
  body: string,
  options: LookupOptions,
): Promise<LookupResult> {
  let last = '';
  for (let attempt = 0; attempt < options.attempts && !options.signal.aborted; attempt++) {
    if (attempt > 0) await sleep(backoffDelay(attempt - 1, options.retry));
    let response: Response;
    try {
      response = await fetch(url, {
        method: 'POST',
        headers: {
          'Content-Type': 'application/json',
          Authorization: `Bearer ${options.token}`,
          'User-Agent': 'image-ci-actions',
        },
        body,
        signal: AbortSignal.any([AbortSignal.timeout(options.timeoutMs), options.signal]),
      });
    } catch (error) {
      // fetch says only "fetch failed"; a proxy's refusal (its cause) says who refused and why.
      const cause = (error as { cause?: unknown }).cause;
      if (cause instanceof ProxyError && !cause.retryable) {
        return { kind: 'outage', message: `GetCacheEntryDownloadURL: ${cause.message}` };
      }
      last = `GetCacheEntryDownloadURL: ${errorMessage(cause instanceof ProxyError ? cause : error)}`;
      continue;
    }
    const text = await response.text().catch(() => '');
    if (response.status >= 500 || response.status === 429 || response.status === 408) {
      last = `GetCacheEntryDownloadURL answered HTTP ${response.status}`;
      continue;
    }
    if (response.status !== 200) {
      return { kind: 'unknown-answer', reason: `GetCacheEntryDownloadURL answered HTTP ${response.status}` };
    }
    return readAnswer(host, text);
  }
  return { kind: 'outage', message: `${last} (after ${options.attempts} attempts)` };
}

function readAnswer(host: Host, text: string): LookupResult {
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(text) as Record<string, unknown>;
  } catch {
    return {
      kind: 'unknown-answer',
      reason: 'GetCacheEntryDownloadURL answered with something other than JSON',
    };
  }
  if (parsed.ok !== true) return { kind: 'miss' };
  // protobuf JSON allows either the proto or the camelCase name.
  const url = parsed.signed_download_url ?? parsed.signedDownloadUrl;
  const matchedKey = parsed.matched_key ?? parsed.matchedKey;
  if (typeof url !== 'string' || typeof matchedKey !== 'string' || !matchedKey) {
    return { kind: 'unknown-answer', reason: 'GetCacheEntryDownloadURL answered ok without a URL and key' };
  }
  let parsedUrl: URL;
  try {
    parsedUrl = new URL(url);
  } catch {
    return { kind: 'unknown-answer', reason: 'the signed download URL is not a URL' };
  }
  if (parsedUrl.protocol !== 'https:' && parsedUrl.protocol !== 'http:') {
    return { kind: 'unknown-answer', reason: `the signed download URL uses ${parsedUrl.protocol}` };
  }
  // The SAS signature is a credential for the archive: masked like the library masks it.
  const sig = parsedUrl.searchParams.get('sig');
  if (sig) {
    host.setSecret(sig);
    host.setSecret(encodeURIComponent(sig));
  }
  return { kind: 'hit', matchedKey, url };
}
