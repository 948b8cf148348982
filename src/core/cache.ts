/**
 * The cache layer every action uses: restore (with restore-keys and lookup-only), a save that reports a typed
 * outcome and never throws into the action, and a main -> post hand-off so post saves only what main decided.
 * Keys are built and checked in cache-key.ts.
 *
 * Two backends behind one contract: the Actions cache service through the unmodified @actions/cache library,
 * and a plain directory (the CLI's --cache-dir, for CI systems that mount a persistent volume). Caching is an
 * optimisation: a broken or absent cache is a warning, never a failed step.
 */
import { existsSync } from 'node:fs';
import { validateCacheKey } from './cache-key.js';
import type { Host } from './host.js';
import { errorMessage } from './run.js';
import { restoreFromActionsCache, saveToActionsCache } from './cache-actions.js';
import { cacheDirSizeBudget, restoreFromDirCache, saveToDirCache } from './cache-dir.js';

export type CacheBackend = 'actions' | 'dir' | 'none';

export interface RestoreResult {
  /** True only when the exact primary key was restored (or found, for a lookup). */
  hit: boolean;
  matchedKey?: string;
  backend: CacheBackend;
  /** With `fileDigests`: `sha256:<hex>` of restored regular files by absolute path, where the backend knows it. */
  fileDigests?: Record<string, string>;
}

export type SaveOutcome = 'saved' | 'exists' | 'too-large' | 'unavailable' | 'failed' | 'skipped';

export interface SaveResult {
  outcome: SaveOutcome;
  message: string;
}

export interface PlannedSave {
  paths: string[];
  key: string;
}

export interface RestoreOptions {
  /** Only check that an entry exists; download nothing. */
  lookupOnly?: boolean;
  /**
   * Hash the restored files on the way in (the streaming restore reads every byte anyway), so the caller can
   * verify them without reading them back from disk.
   */
  fileDigests?: boolean;
  /**
   * The caller only reads the restored files, never writes them: the directory backend may then hard-link them
   * from the cache instead of copying.
   */
  readOnly?: boolean;
}

/** What a backend reports back; the wrapper turns it into logs and a RestoreResult. */
export interface BackendRestore {
  matchedKey?: string;
  fileDigests?: Record<string, string>;
  /** Set when the cache could not be asked (outage, broken download): the result is then a miss. */
  problem?: string;
  /** Set when the entry found is not one to restore (see cache-stream.ts): the result is then a miss. */
  refused?: string;
}

export const CACHE_DIR_ENV = 'IMAGE_CI_CACHE_DIR';
const PLAN_STATE = 'ici-cache-plan';

/**
 * 'actions' when the runner provides the Actions cache service (v2: ACTIONS_CACHE_SERVICE_V2 +
 * ACTIONS_RESULTS_URL; GHES/v1: ACTIONS_CACHE_URL); else 'dir' when IMAGE_CI_CACHE_DIR is set; else 'none'.
 */
export function cacheBackend(env: NodeJS.ProcessEnv = process.env): CacheBackend {
  if ((env.ACTIONS_CACHE_SERVICE_V2 && env.ACTIONS_RESULTS_URL) || env.ACTIONS_CACHE_URL) return 'actions';
  if (env[CACHE_DIR_ENV]) return 'dir';
  return 'none';
}

/**
 * Restores `paths` from the newest entry matching the primary key or a restore key. An outage or a broken entry
 * is logged as a warning and reported as a miss, so the action simply does the work uncached. Throws only an
 * InputError, for a cache setting in the environment that is wrong (found here, in main, not at the save).
 */
export async function restoreCache(
  host: Host,
  paths: string[],
  primaryKey: string,
  restoreKeys: string[] = [],
  options: RestoreOptions = {},
): Promise<RestoreResult> {
  const backend = cacheBackend();
  if (backend === 'none') {
    host.info(`Cache not restored: no cache backend (no Actions cache service and no ${CACHE_DIR_ENV}).`);
    return { hit: false, backend };
  }
  if (backend === 'dir') cacheDirSizeBudget();
  const verb = options.lookupOnly ? 'Looking up' : 'Restoring';
  host.info(`${verb} cache ${primaryKey} (${backend} backend) for ${paths.join(', ')}`);
  let found: BackendRestore;
  try {
    found =
      backend === 'actions'
        ? await restoreFromActionsCache(host, paths, primaryKey, restoreKeys, options)
        : await restoreFromDirCache(host, requireCacheDir(), paths, primaryKey, restoreKeys, options);
  } catch (error) {
    found = { problem: errorMessage(error) };
  }
  if (found.problem) {
    host.warning(`Cache unavailable, continuing without it (${backend} backend): ${found.problem}`);
    return { hit: false, backend };
  }
  if (found.refused) {
    host.warning(`Cache entry refused, continuing without it (${backend} backend): ${found.refused}`);
    return { hit: false, backend };
  }
  if (!found.matchedKey) {
    host.info(
      `Cache miss for ${primaryKey}${restoreKeys.length ? ` (restore keys: ${restoreKeys.join(', ')})` : ''}`,
    );
    return { hit: false, backend };
  }
  const hit = found.matchedKey === primaryKey;
  const how = options.lookupOnly ? 'found' : 'restored';
  host.info(hit ? `Cache ${how}: ${primaryKey}` : `Cache ${how} from restore key match: ${found.matchedKey}`);
  const result: RestoreResult = { hit, matchedKey: found.matchedKey, backend };
  if (found.fileDigests) result.fileDigests = found.fileDigests;
  return result;
}

/**
 * Saves `paths` under `key`. Never throws. 'exists' (another job is saving the same key, or it is already
 * saved) is an info line, because concurrent matrix jobs computing one key is normal; outages and refusals are
 * warnings; the step's result never depends on the cache.
 */
export async function saveCache(host: Host, paths: string[], key: string): Promise<SaveResult> {
  const backend = cacheBackend();
  let result: SaveResult;
  if (backend === 'none') {
    result = { outcome: 'skipped', message: 'no cache backend is configured' };
  } else if (!paths.some((p) => existsSync(p))) {
    result = { outcome: 'skipped', message: `none of the paths exist: ${paths.join(', ')}` };
  } else {
    host.info(`Saving cache ${key} (${backend} backend) from ${paths.join(', ')}`);
    try {
      validateCacheKey(key);
      result =
        backend === 'actions'
          ? await saveToActionsCache(host, paths, key)
          : await saveToDirCache(host, requireCacheDir(), paths, key);
    } catch (error) {
      result = { outcome: 'failed', message: errorMessage(error) };
    }
  }
  logSaveResult(host, key, result);
  return result;
}

function logSaveResult(host: Host, key: string, result: SaveResult): void {
  switch (result.outcome) {
    case 'saved':
      host.info(`Cache saved: ${key} (${result.message})`);
      return;
    case 'exists':
      host.info(`Cache not saved, another job saved or is saving ${key}: ${result.message}`);
      return;
    case 'skipped':
      host.info(`Cache save skipped for ${key}: ${result.message}`);
      return;
    case 'unavailable':
      host.warning(`Cache unavailable, ${key} not saved: ${result.message}`);
      return;
    case 'too-large':
      host.warning(`Cache entry ${key} too large, not saved: ${result.message}`);
      return;
    case 'failed':
      host.warning(`Cache save of ${key} failed: ${result.message}`);
      return;
  }
}

/** Records in state what post must save; a later call replaces an earlier plan. */
export function planCacheSave(host: Host, plan: PlannedSave): void {
  validateCacheKey(plan.key);
  host.saveState(PLAN_STATE, JSON.stringify({ paths: plan.paths, key: plan.key }));
}

/** In post: saves what main planned. Idempotent: a second call (or a call without a plan) does nothing. */
export async function runPlannedSave(host: Host): Promise<SaveResult | undefined> {
  const raw = host.getState(PLAN_STATE);
  if (!raw) return undefined;
  host.saveState(PLAN_STATE, '');
  let plan: PlannedSave | undefined;
  try {
    plan = asPlannedSave(JSON.parse(raw));
  } catch {
    plan = undefined;
  }
  if (!plan) {
    const result: SaveResult = {
      outcome: 'failed',
      message: 'unreadable cache plan in state: expected {paths: string[], key: string}',
    };
    host.warning(result.message);
    return result;
  }
  return saveCache(host, plan.paths, plan.key);
}

/** `value` when it is a PlannedSave, else undefined: state is read back from another process, never trusted. */
export function asPlannedSave(value: unknown): PlannedSave | undefined {
  const plan = value as Partial<PlannedSave> | null;
  if (
    typeof plan?.key !== 'string' ||
    !Array.isArray(plan.paths) ||
    !plan.paths.every((p) => typeof p === 'string')
  ) {
    return undefined;
  }
  return { key: plan.key, paths: plan.paths };
}

function requireCacheDir(): string {
  const dir = process.env[CACHE_DIR_ENV];
  if (!dir) throw new Error(`${CACHE_DIR_ENV} is not set`);
  return dir;
}
