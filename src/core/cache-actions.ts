/**
 * The Actions cache backend. Restores stream the archive straight into tar (cache-stream.ts) and fall back to
 * the unmodified @actions/cache library for anything the stream does not handle; saves always use the library.
 * The library is loaded on first use: actions that never touch the cache do not pay for parsing it.
 *
 * What the library tells its caller, and what only its log does: saveCache returns the entry id, throws its
 * ValidationError (a key or paths it refuses) and a few errors it raises before it starts (no paths exist), and
 * catches everything else itself (ReserveCacheError, FinalizeCacheError, HTTP and network errors), logs it
 * through @actions/core and returns -1; restoreCache returns undefined for misses and outages alike. So the
 * outcome is read from the return value and the thrown error first, and only a -1 or an undefined is explained
 * from the log: each call runs with stdout captured, the library's lines are re-emitted through the Host
 * (progress as info, its debug as debug, its masks as secrets) and its warnings/errors are kept to classify the
 * outcome, which the wrapper then reports once, in its own words. The log lines read are the ones the
 * library's catch blocks write per error class; cache-library.test.ts checks them against the installed
 * version.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { BackendRestore, RestoreOptions, SaveResult } from './cache.js';
import { matchedKeyProblem } from './cache-key.js';
import { streamRestore, StreamUnusable } from './cache-stream.js';
import type { Host } from './host.js';
import { parseDuration } from './inputs.js';
import { errorMessage } from './run.js';
import { interceptStdout, parseLibraryCommand } from './library-output.js';
import { formatDuration } from './summary.js';
import { withPrivateRunnerTemp } from './workspace.js';

/**
 * Bounds each library call: its twirp requests have no timeout of their own, and a cache that hangs must not
 * hold a job for hours. Generous by default because multi-GiB VM images are cached through it.
 */
export const CACHE_TIMEOUT_ENV = 'IMAGE_CI_CACHE_TIMEOUT';
const DEFAULT_CACHE_TIMEOUT_MS = 20 * 60_000;

export function cacheCallTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env[CACHE_TIMEOUT_ENV];
  if (!raw) return DEFAULT_CACHE_TIMEOUT_MS;
  const ms = parseDuration(raw);
  if (!ms) throw new Error(`${CACHE_TIMEOUT_ENV}='${raw}' is not a duration (e.g. 20m)`);
  return ms;
}

/** The library call outlived IMAGE_CI_CACHE_TIMEOUT: the service is as good as unavailable. */
class CacheDeadline extends Error {
  constructor(ms: number) {
    super(`the cache service did not answer: timed out after ${formatDuration(ms)}`);
    this.name = 'CacheDeadline';
  }
}

/**
 * Stops waiting for `promise` after `ms`. The library call cannot be cancelled; it is abandoned (its late result
 * ignored), which is still better than a step that never ends.
 */
function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CacheDeadline(ms)), ms);
  });
  promise.catch(() => undefined);
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

export interface LibraryLine {
  kind: 'info' | 'debug' | 'warning' | 'error';
  text: string;
}

/** The library's own failure lines; the wrapper restates them with the real reason. */
const LIBRARY_FAILURE = /^Failed to (save|restore):/;

/**
 * A line of the library's output. Only the commands it writes itself are read as commands; any other line, even
 * one that looks like a command (a matched key from the service can hold line breaks), is logged as text.
 */
function parseLine(line: string): LibraryLine | { kind: 'mask'; text: string } {
  const command = parseLibraryCommand(line);
  if (!command) return { kind: 'info', text: line };
  switch (command.name) {
    case 'add-mask':
      return { kind: 'mask', text: command.data };
    case 'debug':
      return { kind: 'debug', text: command.data };
    case 'warning':
    case 'notice':
      return { kind: 'warning', text: command.data };
    case 'error':
      return { kind: 'error', text: command.data };
    default:
      return { kind: 'info', text: line };
  }
}

/** One library call at a time: stdout is process-wide, so overlapping captures could not tell lines apart. */
let queue: Promise<unknown> = Promise.resolve();

async function withLibraryLog<T>(
  host: Host,
  fn: () => Promise<T>,
): Promise<{ value: T; lines: LibraryLine[] }> {
  const run = queue.then(() => withPrivateRunnerTemp(() => captureWhile(host, fn)));
  queue = run.catch(() => undefined);
  return run;
}

/** The library call an asynchronous write comes from: its output is captured whenever it comes. */
const libraryCall = new AsyncLocalStorage<object>();

async function captureWhile<T>(
  host: Host,
  fn: () => Promise<T>,
): Promise<{ value: T; lines: LibraryLine[] }> {
  const timeoutMs = cacheCallTimeoutMs();
  const lines: LibraryLine[] = [];
  const call = {};
  // The Host writes through @actions/core too: interceptStdout sends its own lines straight out, and so do
  // writes that are not this library call's (the rest of the process meanwhile). Every line of the library's
  // goes through the Host, which keeps it from starting a workflow command.
  const restore = interceptStdout(
    (line) => {
      const parsed = parseLine(line);
      if (parsed.kind === 'mask') host.setSecret(parsed.text);
      else {
        lines.push(parsed);
        if (parsed.kind === 'info' && !LIBRARY_FAILURE.test(parsed.text)) host.info(parsed.text);
        else if (parsed.kind === 'info') host.debug(parsed.text);
        else
          host.debug(parsed.kind === 'debug' ? parsed.text : `@actions/cache ${parsed.kind}: ${parsed.text}`);
      }
    },
    { captures: () => libraryCall.getStore() === call },
  );
  const promise = libraryCall.run(call, fn);
  let settled = false;
  promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  try {
    const value = await withDeadline(promise, timeoutMs);
    return { value, lines };
  } finally {
    // A call abandoned at the deadline still runs: when it fails later (the service resets the connection),
    // the library prints `::warning::Failed to restore` on stdout. Its capture stays until it has settled.
    if (settled) restore();
    else promise.then(restore, restore);
  }
}

/** Outage signatures of both protocols: 5xx after retries, network errors, the v1 "responded with 5xx". */
const UNAVAILABLE =
  /\(5\d\d\)|responded with 5\d\d|after \d+ attempts|Unable to make request|ECONNREFUSED|ECONNRESET|ENOTFOUND|ETIMEDOUT|EHOSTUNREACH|socket hang up|Rate limited|timed out/i;
const TOO_LARGE = /over the (10GB|data cap) limit|too large|exceeds|quota has been hit/i;

function problems(lines: LibraryLine[]): string[] {
  return lines.filter((l) => l.kind === 'warning' || l.kind === 'error').map((l) => l.text);
}

const loadLibrary = () => import('@actions/cache');

export async function restoreFromActionsCache(
  host: Host,
  paths: string[],
  primaryKey: string,
  restoreKeys: string[],
  options: RestoreOptions,
): Promise<BackendRestore> {
  try {
    return await streamRestore(host, paths, primaryKey, restoreKeys, options, {
      deadlineMs: cacheCallTimeoutMs(),
    });
  } catch (error) {
    const reason = error instanceof StreamUnusable ? error.message : `unexpected: ${errorMessage(error)}`;
    host.info(`Streaming restore not used (${reason}); restoring through @actions/cache.`);
  }
  return restoreWithLibrary(host, paths, primaryKey, restoreKeys, options);
}

async function restoreWithLibrary(
  host: Host,
  paths: string[],
  primaryKey: string,
  restoreKeys: string[],
  options: RestoreOptions,
): Promise<BackendRestore> {
  const workspace = process.env.GITHUB_WORKSPACE ?? process.cwd();
  const absent = paths.map((p) => resolve(workspace, p)).filter((p) => !existsSync(p));
  const removeNew = () => Promise.all(absent.map((p) => rm(p, { recursive: true, force: true })));
  try {
    const cache = await loadLibrary();
    const { value, lines } = await withLibraryLog(host, () =>
      cache.restoreCache(paths, primaryKey, restoreKeys, { lookupOnly: options.lookupOnly ?? false }),
    );
    if (value) {
      // The files are in place, whatever the library grumbled about on the way; but an entry the caller did
      // not ask for is no hit (the library takes any key the service names). What it put where nothing was
      // goes again; files it overwrote cannot be put back.
      const unasked = matchedKeyProblem(value, primaryKey, restoreKeys);
      if (!unasked) return { matchedKey: value };
      await removeNew();
      return { refused: `@actions/cache restored ${unasked}` };
    }
    // The library leaves what its tar wrote before failing (a full disk): a truncated file must not look
    // restored. What it put where nothing was goes again; files it overwrote cannot be put back.
    if (!options.lookupOnly) await removeNew();
    const failures = problems(lines);
    return failures.length > 0 ? { problem: failures.join('; ') } : {};
  } catch (error) {
    return { problem: errorMessage(error) };
  }
}

export async function saveToActionsCache(host: Host, paths: string[], key: string): Promise<SaveResult> {
  const cache = await loadLibrary();
  let id: number;
  let lines: LibraryLine[];
  try {
    ({ value: id, lines } = await withLibraryLog(host, () => cache.saveCache(paths, key)));
  } catch (error) {
    if (error instanceof CacheDeadline) return { outcome: 'unavailable', message: error.message };
    if (error instanceof cache.ValidationError) {
      return { outcome: 'failed', message: `@actions/cache refused the entry: ${error.message}` };
    }
    return { outcome: 'failed', message: errorMessage(error) };
  }
  if (id !== -1) return { outcome: 'saved', message: `entry ${id}` };
  return classifySaveFailure(lines, cache.CACHE_WRITE_DENIED_PREFIX);
}

/** How the library's save logs each error it catches (saveCacheV1/V2 in its cache.js). */
export const LIBRARY_SAVE_LOG = {
  /** info, before anything is tried: ACTIONS_CACHE_MODE forbids writes. */
  skipped: 'Cache save skipped: ',
  /** info for a ReserveCacheError; warning for any other error, error when it was an HTTP 5xx. */
  failed: 'Failed to save: ',
  /** debug, v2: why the reservation failed; the library turns every such failure into a ReserveCacheError. */
  reserveCause: 'Failed to reserve cache: ',
  /** warning, v2: the service's answer to the reservation, logged before the ReserveCacheError. */
  reservation: 'Cache reservation failed: ',
} as const;

/**
 * Why saveCache returned -1, from what its catch block logged (the error itself never reaches the caller):
 * a ReserveCacheError (info `Failed to save:`) means another job holds the key, unless its cause (v2: a debug
 * line) was an outage or a size refusal; a warning without the prefix is a FinalizeCacheError; a write denied by
 * policy (`writeDeniedPrefix`, the library's own constant) is a skip, like a read-only cache mode.
 */
export function classifySaveFailure(lines: readonly LibraryLine[], writeDeniedPrefix?: string): SaveResult {
  const skipped = lines.find((l) => l.kind === 'info' && l.text.startsWith(LIBRARY_SAVE_LOG.skipped));
  if (skipped) return { outcome: 'skipped', message: skipped.text };
  const denied = writeDeniedPrefix && lines.find((l) => l.text.includes(writeDeniedPrefix));
  if (denied) return { outcome: 'skipped', message: denied.text };

  const reserve = lines.find((l) => l.kind === 'info' && l.text.startsWith(LIBRARY_SAVE_LOG.failed));
  if (reserve) {
    const cause =
      lines.find((l) => l.kind === 'debug' && l.text.startsWith(LIBRARY_SAVE_LOG.reserveCause))?.text ??
      reserve.text;
    if (TOO_LARGE.test(cause)) return { outcome: 'too-large', message: cause };
    if (UNAVAILABLE.test(cause)) return { outcome: 'unavailable', message: cause };
    return { outcome: 'exists', message: cause };
  }
  const failed = lines.find(
    (l) => (l.kind === 'warning' || l.kind === 'error') && l.text.startsWith(LIBRARY_SAVE_LOG.failed),
  );
  if (failed) {
    if (TOO_LARGE.test(failed.text)) return { outcome: 'too-large', message: failed.text };
    if (failed.kind === 'error' || UNAVAILABLE.test(failed.text)) {
      return { outcome: 'unavailable', message: failed.text };
    }
    return { outcome: 'failed', message: failed.text };
  }
  const finalize = lines.find(
    (l) => l.kind === 'warning' && !l.text.startsWith(LIBRARY_SAVE_LOG.reservation),
  );
  if (finalize) {
    return { outcome: TOO_LARGE.test(finalize.text) ? 'too-large' : 'failed', message: finalize.text };
  }
  return { outcome: 'failed', message: '@actions/cache did not save the entry and gave no reason' };
}
