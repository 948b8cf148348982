/**
 * Persisting `RUN --mount=type=cache` contents between runs: the service's cache-mount dir below its $TMPDIR is
 * restored before the service starts and saved after it stopped (so nothing writes while tar reads).
 *
 * Keys: the contents change with every build that touches them and a cache entry can never be overwritten, so
 * each save gets a key named after what it holds (`<cache-key>-<os>-<arch>-<fingerprint>`) and a restore takes
 * the newest entry under the `<cache-key>-<os>-<arch>-` prefix. There is no "exact" key to hit before the
 * contents are known, so `cache-hit` means "something was restored".
 *
 * Paths: the cache library versions an entry by its path strings, so restore and save must name the same path
 * in every run: a stage dir named after the cache key (`$RUNNER_TEMP/ici-rbe-<hash>`). Two services must never
 * share it, though (two instances in one job, or two CLI runs without RUNNER_TEMP, where one would wipe the
 * other's live cache mounts), so no service runs on it: each has a private TMPDIR, and the stage is used only
 * under its lock, for the moment of a restore (restore into the stage, move into the private dir) or a save
 * (move back, save, empty the stage). The lock names the process holding it; a run killed meanwhile leaves a lock
 * the next one takes over at once (its owner is gone) and a stage it empties first.
 */
import { lstat, mkdir, rename } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { acquireLock, LockTimeoutError, type Lock } from '../../core/atomic.js';
import { restoreCache, saveCache } from '../../core/cache.js';
import { printable } from '../../core/cache-confinement.js';
import { cacheKeyPrefix } from '../../core/cache-key.js';
import { pathExists } from '../../core/files.js';
import type { Host } from '../../core/host.js';
import { errorMessage } from '../../core/run.js';
import { formatDuration } from '../../core/summary.js';
import { confineRestored, EMPTY_FINGERPRINT, fingerprintDir, removeUnrestorable } from './fingerprint.js';
import type { PodmanVersion } from '../../core/podman.js';
import { removeTree } from './cleanup.js';
import { readOwners, restoreOwners, takeOwnership } from './owners.js';
import type { CacheState } from './state.js';

/** Enough of the fingerprint to tell cache generations apart. */
const KEY_FINGERPRINT_CHARS = 16;
/** Another run holds the stage only while it restores or saves; a transfer of many GB fits in this. */
const STAGE_LOCK_TIMEOUT_MS = 15 * 60_000;
/** How often a wait for the stage looks at `interrupted`. */
const STAGE_LOCK_ATTEMPT_MS = 1_000;

/**
 * Where the service's buildah keeps cache mounts: `$TMPDIR/buildah-cache` up to podman 4.3 (buildah 1.28), and
 * `$TMPDIR/buildah-cache-<uid>` from podman 4.4 (buildah 1.29) on, uid being the service's user (0 rootful).
 * The service runs as this process's user.
 */
export function cacheMountDir(tmpdir: string, podman: PodmanVersion, uid = process.getuid?.() ?? 0): string {
  const perUser = podman.major > 4 || (podman.major === 4 && podman.minor >= 4);
  return join(tmpdir, perUser ? `buildah-cache-${uid}` : 'buildah-cache');
}

/** Whether to wait for the stage another run holds: 'yes', 'no', or until the CLI is interrupted. */
type StageWait = 'yes' | 'no' | AbortSignal;

/**
 * The stage's lock, a file beside it (the stage itself is emptied while held). Waited for in short attempts so
 * that a signal to the CLI (`interrupted`) ends the wait at once instead of after the other run's transfer.
 */
async function lockStage(host: Host, stage: string, wait: StageWait): Promise<Lock> {
  const path = `${stage}.lock`;
  const options = { purpose: 'remote-build-env cache mounts', warn: (m: string) => host.warning(m) };
  if (wait === 'no') return acquireLock(path, { ...options, timeoutMs: 0 });
  const interrupted = wait === 'yes' ? undefined : wait;
  const deadline = Date.now() + STAGE_LOCK_TIMEOUT_MS;
  for (let waiting = false; ; waiting = true) {
    try {
      return await acquireLock(path, { ...options, timeoutMs: waiting ? STAGE_LOCK_ATTEMPT_MS : 0 });
    } catch (error) {
      if (!(error instanceof LockTimeoutError) || Date.now() >= deadline) throw error;
      interrupted?.throwIfAborted();
      if (!waiting) {
        host.info(
          `Waiting for ${path} (another run with this cache-key is restoring or saving; up to ${formatDuration(STAGE_LOCK_TIMEOUT_MS)}): ${error.message}`,
        );
      }
    }
  }
}

/** Runs `fn` holding the stage, which is empty when `fn` starts (whatever a killed run left) and when it ends. */
async function withStage<T>(host: Host, stage: string, wait: StageWait, fn: () => Promise<T>): Promise<T> {
  const lock = await lockStage(host, stage, wait);
  try {
    await removeTree(host, stage);
    return await fn();
  } finally {
    await removeTree(host, stage).catch((e) => host.warning(`could not empty ${stage}: ${errorMessage(e)}`));
    await lock.release();
  }
}

export interface CacheMountPaths {
  /** The stable dir restores and saves go through (`path` in CacheState is below it). */
  stage: string;
  /** The cacheMountDir of the service's private TMPDIR. */
  live: string;
}

/** The first few of `paths` (names from an entry or a build), for a log line. */
function listed(paths: readonly string[]): string {
  return `${paths.slice(0, 5).map(printable).join(', ')}${paths.length > 5 ? ', ...' : ''}`;
}

/**
 * Readies a restored entry for the service and returns its fingerprint, or undefined (with a warning) when it is
 * not to be used; the stage is emptied after either way. The entry is confined to `path`, but `path` itself may
 * come back as a symlink (the service's cache mounts would live wherever it points) or a file, and what is below
 * it may be unreadable to a non-root runner (a directory of mode 000): a cache never fails the step. Owners and
 * modes a rootless save recorded are put back last (owners.ts), once the entry is known to be used.
 */
async function takeRestored(host: Host, path: string, matchedKey: string): Promise<string | undefined> {
  try {
    if (!(await lstat(path)).isDirectory()) throw new Error(`the entry holds no directory at ${path}`);
    const { linksOut, setuid } = await confineRestored(path);
    if (linksOut.length) {
      host.warning(
        `cache mounts from ${matchedKey}: removed ${linksOut.length} symlink(s) leading out of the cache-mount dir (buildah would follow them to mount what they point at into builds): ${listed(linksOut)}.`,
      );
    }
    if (setuid.length) {
      host.warning(
        `cache mounts from ${matchedKey}: cleared the setuid/setgid bits of ${setuid.length} file(s): ${listed(setuid)}.`,
      );
    }
    const owners = await readOwners(path);
    const fingerprint = await fingerprintDir(path, owners);
    if (owners) await restoreOwners(path, owners);
    return fingerprint;
  } catch (error) {
    // Errors name the entry's files (and a failed owners script's output quotes them).
    host.warning(
      `cache mounts from ${matchedKey} not used, starting without them: ${printable(errorMessage(error))}.`,
    );
    return undefined;
  }
}

/**
 * Restores the newest entry under the key prefix and moves it to `live`. Never throws for the cache's sake: a
 * stage held too long by another run means starting without the cache, as a cache outage does.
 */
export async function restoreCacheMounts(
  host: Host,
  paths: CacheMountPaths,
  cacheKey: string,
  restoreKeys: readonly string[],
  interrupted?: AbortSignal,
): Promise<CacheState> {
  const prefix = cacheKeyPrefix({ prefix: cacheKey });
  const state: CacheState = {
    path: join(paths.stage, basename(paths.live)),
    live: paths.live,
    keyPrefix: prefix,
    fingerprint: EMPTY_FINGERPRINT,
  };
  try {
    await withStage(host, paths.stage, interrupted ?? 'yes', async () => {
      // The prefix is passed as a restore key too: only restore keys are matched by prefix everywhere.
      const result = await restoreCache(host, [state.path], prefix, [prefix, ...restoreKeys]);
      if (!result.matchedKey) return;
      const fingerprint = await takeRestored(host, state.path, result.matchedKey);
      if (fingerprint === undefined) return;
      state.fingerprint = fingerprint;
      state.matchedKey = result.matchedKey;
      await rename(state.path, state.live);
    });
  } catch (error) {
    if (!(error instanceof LockTimeoutError)) throw error;
    host.warning(`cache mounts not restored: ${error.message}.`);
  }
  return state;
}

/** `keyPrefix` is `cacheKeyPrefix` of the `cache-key` input. */
export function saveKey(keyPrefix: string, fingerprint: string): string {
  return `${keyPrefix}${fingerprint.slice(0, KEY_FINGERPRINT_CHARS)}`;
}

/** Moves the live cache mounts back to the stage and saves them when the builds changed them. */
export async function saveCacheMounts(host: Host, stage: string, cache: CacheState): Promise<void> {
  await withStage(host, stage, 'yes', async () => {
    if (await pathExists(cache.live)) {
      await mkdir(stage, { mode: 0o700 });
      await rename(cache.live, cache.path);
    }
    // A later step may have put a symlink where the outputs' cache-dir was: what it points at is not ours to
    // tidy up or to save.
    const moved = await lstat(cache.path).catch(() => undefined);
    if (moved && !moved.isDirectory()) {
      host.warning(`cache mounts not saved: ${cache.live} is no directory any more (a symlink or a file).`);
      return;
    }
    // Rootless, what builds wrote as other container users is out of this user's reach until handed over (none
    // when no build made the dir).
    if (moved && process.getuid?.() !== 0) await takeOwnership(cache.path);
    const removed = await removeUnrestorable(cache.path);
    if (removed.length) {
      host.info(
        `Cache mounts: not saving ${removed.length} FIFO(s), socket(s), device node(s), names that are no UTF-8 or paths longer than PATH_MAX a build left there (a restore refuses them): ${listed(removed)}.`,
      );
    }
    const fingerprint = await fingerprintDir(cache.path, await readOwners(cache.path));
    if (fingerprint === EMPTY_FINGERPRINT) {
      host.info('Cache mounts: nothing to save (no build used a cache mount).');
      return;
    }
    if (fingerprint === cache.fingerprint) {
      host.info(`Cache mounts: unchanged since ${cache.matchedKey ?? 'the restore'}, not saved again.`);
      return;
    }
    await saveCache(host, [cache.path], saveKey(cache.keyPrefix, fingerprint));
  });
}

/**
 * Empties a stage a killed main may have left half-restored, when there is nothing to save. Its lock then names
 * a process that is gone and is taken over at once; a live owner is another run, which empties the stage itself
 * when it is done, so there is nothing to wait for.
 */
export async function clearStage(host: Host, stage: string): Promise<void> {
  try {
    await withStage(host, stage, 'no', async () => undefined);
  } catch (error) {
    if (!(error instanceof LockTimeoutError)) throw error;
  }
}
