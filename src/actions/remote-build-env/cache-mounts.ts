/**
 * Persisting `RUN --mount=type=cache` contents between runs: the service's cache-mount dir below its $TMPDIR is
 * restored before the service starts and saved after it stopped (so nothing writes while tar reads).
 *
 * Keys: the contents change with every build that touches them and a cache entry can never be overwritten, so
 * each save gets a key named after what it holds (`<cache-key>-<os>-<arch>-<fingerprint>`) and a restore takes
 * the newest entry under the `<cache-key>-<os>-<arch>-` prefix. There is no "exact" key to hit before the
 * contents are known, so `cache-hit` means "something was restored".
 */
import { join } from 'node:path';
import { restoreCache, saveCache } from '../../core/cache.js';
import { cacheKeyPrefix } from '../../core/cache-key.js';
import type { Host } from '../../core/host.js';
import { EMPTY_FINGERPRINT, fingerprintDir } from './fingerprint.js';
import type { PodmanVersion } from '../../core/podman.js';
import type { CacheState } from './state.js';

/** Enough of the fingerprint to tell cache generations apart. */
const KEY_FINGERPRINT_CHARS = 16;

/**
 * Where the service's buildah keeps cache mounts: `$TMPDIR/buildah-cache` up to podman 4.3 (buildah 1.28), and
 * `$TMPDIR/buildah-cache-<uid>` from podman 4.4 (buildah 1.29) on, uid being the service's user (0 rootful).
 * The service runs as this process's user.
 */
export function cacheMountDir(tmpdir: string, podman: PodmanVersion, uid = process.getuid?.() ?? 0): string {
  const perUser = podman.major > 4 || (podman.major === 4 && podman.minor >= 4);
  return join(tmpdir, perUser ? `buildah-cache-${uid}` : 'buildah-cache');
}

/** Restores the newest entry under the key prefix into `path` (the cacheMountDir of the service). */
export async function restoreCacheMounts(
  host: Host,
  path: string,
  cacheKey: string,
  restoreKeys: readonly string[],
): Promise<CacheState> {
  const prefix = cacheKeyPrefix({ prefix: cacheKey });
  // The prefix is passed as a restore key too: only restore keys are matched by prefix everywhere.
  const result = await restoreCache(host, [path], prefix, [prefix, ...restoreKeys]);
  const state: CacheState = { path, keyPrefix: prefix, fingerprint: await fingerprintDir(path) };
  if (result.matchedKey) state.matchedKey = result.matchedKey;
  return state;
}

/** `keyPrefix` is `cacheKeyPrefix` of the `cache-key` input. */
export function saveKey(keyPrefix: string, fingerprint: string): string {
  return `${keyPrefix}${fingerprint.slice(0, KEY_FINGERPRINT_CHARS)}`;
}

/** Saves the cache-mount dir when the builds changed it. Never throws (saveCache reports problems as warnings). */
export async function saveCacheMounts(host: Host, cache: CacheState): Promise<void> {
  const fingerprint = await fingerprintDir(cache.path);
  if (fingerprint === EMPTY_FINGERPRINT) {
    host.info('Cache mounts: nothing to save (no build used a cache mount).');
    return;
  }
  if (fingerprint === cache.fingerprint) {
    host.info(`Cache mounts: unchanged since ${cache.matchedKey ?? 'the restore'}, not saved again.`);
    return;
  }
  await saveCache(host, [cache.path], saveKey(cache.keyPrefix, fingerprint));
}
