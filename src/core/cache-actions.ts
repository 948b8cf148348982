/**
 * The Actions cache backend. Restores stream the archive straight into tar (cache-stream.ts) and fall back to
 * the unmodified @actions/cache library for anything the stream does not handle; saves always use the library.
 * The library is loaded on first use: actions that never touch the cache do not pay for parsing it.
 *
 * What the library does not tell its caller:
 * saveCache returns -1 for every failure and restoreCache returns undefined for misses and outages alike; the
 * reason exists only in what the library logs through @actions/core (which writes workflow commands to stdout).
 * So each call runs with stdout captured: the library's lines are re-emitted through the Host (progress as info,
 * its debug as debug, its masks as secrets) and its warnings/errors are kept to classify the outcome, which the
 * wrapper then reports once, in its own words (no error annotation for a cache that merely was unavailable).
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { BackendRestore, RestoreOptions, SaveResult } from './cache.js';
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

/**
 * Stops waiting for `promise` after `ms`. The library call cannot be cancelled; it is abandoned (its late result
 * ignored), which is still better than a step that never ends.
 */
function withDeadline<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`the cache service did not answer: timed out after ${formatDuration(ms)}`)),
      ms,
    );
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

function parseLine(
  line: string,
): LibraryLine | { kind: 'mask'; text: string } | { kind: 'raw'; text: string } {
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
      return { kind: 'raw', text: line };
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
  // writes that are not this library call's (the rest of the process meanwhile).
  const restore = interceptStdout(
    (line, passthrough) => {
      const parsed = parseLine(line);
      if (parsed.kind === 'mask') host.setSecret(parsed.text);
      else if (parsed.kind === 'raw') passthrough(`${parsed.text}\n`);
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
const ALREADY_EXISTS = /\(409\)|already exists/i;

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
  try {
    const cache = await loadLibrary();
    const { value, lines } = await withLibraryLog(host, () =>
      cache.restoreCache(paths, primaryKey, restoreKeys, { lookupOnly: options.lookupOnly ?? false }),
    );
    // A returned key means the files are in place, whatever the library grumbled about on the way.
    if (value) return { matchedKey: value };
    const failures = problems(lines);
    return failures.length > 0 ? { problem: failures.join('; ') } : {};
  } catch (error) {
    return { problem: errorMessage(error) };
  }
}

export async function saveToActionsCache(host: Host, paths: string[], key: string): Promise<SaveResult> {
  let id: number;
  let lines: LibraryLine[];
  try {
    const cache = await loadLibrary();
    ({ value: id, lines } = await withLibraryLog(host, () => cache.saveCache(paths, key)));
  } catch (error) {
    const message = errorMessage(error);
    return { outcome: UNAVAILABLE.test(message) ? 'unavailable' : 'failed', message };
  }
  if (id !== -1) return { outcome: 'saved', message: `entry ${id}` };
  return classifySaveFailure(lines);
}

/**
 * Reads why saveCache returned -1. Its v2 path reports every failed reservation, including an outage, as
 * "another job may be creating this cache" (info) and keeps the real cause in a debug line, so the debug
 * lines are searched first.
 */
export function classifySaveFailure(lines: readonly LibraryLine[]): SaveResult {
  const all = lines.map((l) => l.text);
  const skipped = all.find((t) => t.startsWith('Cache save skipped'));
  if (skipped) return { outcome: 'skipped', message: skipped };
  const evidence = [
    ...new Set([
      ...all.filter((t) => t.startsWith('Failed to reserve cache:')),
      ...problems([...lines]),
      ...all.filter((t) => t.startsWith('Failed to save:')),
    ]),
  ];
  const first = (pattern: RegExp) => evidence.find((t) => pattern.test(t));
  const tooLarge = first(TOO_LARGE);
  if (tooLarge) return { outcome: 'too-large', message: tooLarge };
  const outage = first(UNAVAILABLE);
  if (outage) return { outcome: 'unavailable', message: outage };
  const exists = first(ALREADY_EXISTS) ?? first(/another job may be/);
  if (exists) return { outcome: 'exists', message: exists };
  return {
    outcome: 'failed',
    message: evidence.join('; ') || '@actions/cache did not save the entry and gave no reason',
  };
}
