/**
 * Restore from the Actions cache at the speed of the bytes: the entry is looked up as @actions/cache 6 looks it
 * up (service v2 on github.com, v1 on GHES; same key, restore keys and version, so entries the library saved are
 * found), then the archive URL the service names is read as parallel ranged GETs, in order, straight into
 * `zstd -d --long=30 | tar -x` with the library's tar options (a server that ignores Range sends it whole, in one
 * GET). The library instead downloads the whole archive to a temp file and only then extracts it, so its
 * restore costs download + write + read + extract in sequence.
 *
 * Whatever this code does not recognise (a lookup answer of an unknown shape, a 4xx from the archive URL, a
 * tar or zstd error) throws StreamUnusable, and the caller restores through the library instead. Before that,
 * a half-done extraction is undone: the consumer must find either the whole entry or what was there before,
 * never a truncated file that looks restored.
 *
 * An entry that is not what was asked for is refused instead, and not handed to the library (which would take
 * it, and extract it with `tar -P` unchecked): a matched key that is neither the key nor one of its prefixes, or
 * an archive with a member that would be written outside the cache paths (see cache-confinement.ts).
 */
import { which } from '@actions/io';
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, statfs } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import type { BackendRestore, RestoreOptions } from './cache.js';
import { EntryRefused, confineMembers } from './cache-confinement.js';
import { exitOf, launchPair, NotStarted, ownFailure } from './child-exit.js';
import { ChildOutputRelay } from './child-output-relay.js';
import { cacheKeyProblem, matchedKeyProblem } from './cache-key.js';
import { lookupEntry, type CacheService } from './cache-lookup.js';
import { cacheReadable, cacheServiceVersion, cacheVersion, compressionMethod } from './cache-version.js';
import { childEnv, exec, failedForLackOfResources } from './exec.js';
import type { Host } from './host.js';
import { DEFAULT_RETRY } from './oci/retry.js';
import { downloadInOrder, type RangedDownloadResult } from './ranged-download.js';
import { errorMessage } from './run.js';
import { formatBytes, formatDuration } from './summary.js';
import { TarMemberWatcher } from './tar-members.js';
import { leftovers, undoExtraction } from './cache-undo.js';

/** The stream cannot serve this restore; the library should. The message says why, for the one log line. */
export class StreamUnusable extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = 'StreamUnusable';
  }
}

/** The library's own limits: its ValidationError would be thrown from the fallback anyway. */
const MAX_KEYS = 10;
/** Like the library's Azure download: 4 MiB ranges, 8 at a time (32 MiB in memory at most). */
const CHUNK_BYTES = 4 * 1024 * 1024;
const CONCURRENCY = 8;
const IDLE_TIMEOUT_MS = 30_000;
/** 4 retries for one range (about 4 s of backoff), 20 for the whole archive. */
const RANGE_RETRY = { ...DEFAULT_RETRY, retries: 4 };
const RETRY_BUDGET = 20;
const LOOKUP = { timeoutMs: 30_000, attempts: 3, retry: { ...DEFAULT_RETRY, baseDelayMs: 1000 } };
const TAR_PROBE_TIMEOUT_MS = 30_000;
/** How long zstd and tar get to exit by themselves after one of them stopped reading. */
const EXIT_GRACE_MS = 5000;

export interface StreamSettings {
  /** The whole restore is abandoned (and undone) after this long. */
  deadlineMs: number;
}

export async function streamRestore(
  host: Host,
  paths: string[],
  primaryKey: string,
  restoreKeys: string[],
  options: RestoreOptions,
  settings: StreamSettings,
): Promise<BackendRestore> {
  const env = process.env;
  const service = usableService(env, [primaryKey, ...restoreKeys]);
  const [tar, method] = await Promise.all([tarCommand(), compressionMethod()]);
  if (method !== 'zstd-without-long') throw new StreamUnusable('zstd is not installed (gzip archives)');

  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(), settings.deadlineMs);
  const timedOut = {
    problem: `the cache service did not answer: timed out after ${formatDuration(settings.deadlineMs)}`,
  };
  try {
    const found = await lookupEntry(
      host,
      { key: primaryKey, restoreKeys, version: cacheVersion(paths, method) },
      {
        service,
        token: env.ACTIONS_RUNTIME_TOKEN!,
        signal: deadline.signal,
        ...LOOKUP,
      },
    );
    if (deadline.signal.aborted) return timedOut;
    if (found.kind === 'miss') return {};
    if (found.kind === 'outage') return { problem: found.message };
    if (found.kind === 'unknown-answer') throw new StreamUnusable(found.reason);
    const unasked = matchedKeyProblem(found.matchedKey, primaryKey, restoreKeys);
    if (unasked) return { refused: `the cache service answered with ${unasked}` };
    host.info(`Cache hit for${found.matchedKey === primaryKey ? '' : ' restore-key'}: ${found.matchedKey}`);
    if (options.lookupOnly) return { matchedKey: found.matchedKey };

    const workspace = env.GITHUB_WORKSPACE ?? process.cwd();
    await mkdir(workspace, { recursive: true });
    const targets = paths.map((p) => resolve(workspace, p));
    const absent = targets.filter((p) => !existsSync(p));
    // Every member is seen (and may be refused) before tar gets it; the watcher also learns what to undo.
    const watch = new TarMemberWatcher(options.fileDigests ?? false, confineMembers(workspace, paths));
    const run = new Extraction(tar, workspace, watch, deadline.signal);
    const started = Date.now();
    try {
      const { bytes, ranges, retries } = await run.from(found.url, await freeSpace(targets), (what, error) =>
        host.info(`Retrying ${what} of the cache archive: ${error.message}`),
      );
      const ms = Date.now() - started;
      host.info(
        `Cache Size: ~${Math.round(bytes / (1024 * 1024))} MB (${bytes} B), streamed into tar in ${formatDuration(ms)} (${formatBytes((bytes * 1000) / Math.max(ms, 1))}/s, ${ranges} range(s), ${retries} retried)`,
      );
      host.info('Cache restored successfully');
      return { matchedKey: found.matchedKey, fileDigests: run.fileDigests() };
    } catch (error) {
      // Whatever the undo meets, a refused entry stays refused: the library would extract it unchecked.
      const left = leftovers(await undoExtraction(workspace, watch.members, absent));
      if (deadline.signal.aborted) return { problem: timedOut.problem + left };
      if (error instanceof EntryRefused) return { refused: error.message + left };
      if (error instanceof StreamUnusable && left) throw new StreamUnusable(error.message + left);
      throw error;
    }
  } finally {
    clearTimeout(timer);
  }
}

/** The service to ask, where the library would ask it, when the stream can serve this restore at all. */
function usableService(env: NodeJS.ProcessEnv, keys: string[]): CacheService {
  // config.js: v1 asks ACTIONS_CACHE_URL, or ACTIONS_RESULTS_URL when that is unset; v2 only the latter.
  const v2 = cacheServiceVersion(env) === 'v2';
  const url = v2 ? env.ACTIONS_RESULTS_URL : env.ACTIONS_CACHE_URL || env.ACTIONS_RESULTS_URL;
  if (!url || !env.ACTIONS_RUNTIME_TOKEN) {
    const urls = v2 ? 'ACTIONS_RESULTS_URL' : 'ACTIONS_CACHE_URL (or ACTIONS_RESULTS_URL)';
    throw new StreamUnusable(`${urls} or ACTIONS_RUNTIME_TOKEN is not set`);
  }
  if (!cacheReadable(env)) throw new StreamUnusable(`ACTIONS_CACHE_MODE=${env.ACTIONS_CACHE_MODE}`);
  if (keys.length > MAX_KEYS || keys.some((k) => cacheKeyProblem(k) !== undefined)) {
    throw new StreamUnusable('a key the library would refuse');
  }
  return v2 ? { version: 'v2', resultsUrl: url } : { version: 'v1', cacheUrl: url };
}

/**
 * The most an archive for these paths can sensibly be: the free space where it is extracted (the largest among
 * the paths' filesystems). A server claiming more is not believed.
 */
async function freeSpace(targets: string[]): Promise<number> {
  let most = 0;
  for (const target of targets) {
    let dir = target;
    while (!existsSync(dir) && dir !== dirname(dir)) dir = dirname(dir);
    const fs = await statfs(dir);
    most = Math.max(most, fs.bavail * fs.bsize);
  }
  return most;
}

interface TarCommand {
  path: string;
  args: string[];
}

/**
 * The tar @actions/cache runs: GNU tar (gtar on macOS when installed, with its macOS option), else BSD tar.
 * GNU tar also gets 1 MiB records: with its default 10 KiB ones it makes about 100,000 reads and as many writes
 * per GiB, and `zstd -dc | tar -x` of the 1 GiB bench archive took 1.4–1.9 s (2.2–2.7 CPU-s) against 0.9 s
 * (1.3 CPU-s). It reads full records from a pipe whatever the sizes of the writes, and the record size does not
 * change how members are read.
 */
async function tarCommand(): Promise<TarCommand> {
  if (process.platform === 'win32') throw new StreamUnusable('Windows (the library picks its tar there)');
  // @actions/io's which answers '' for a command that is not on PATH.
  const gtar = process.platform === 'darwin' ? await which('gtar') : '';
  const path = gtar || (await which('tar'));
  if (!path) throw new StreamUnusable('tar is not on PATH');
  const args = ['-xf', '-', '-P'];
  if (gtar) args.push('--delay-directory-restore');
  if (await isGnuTar(path)) args.push('--blocking-factor=2048');
  return { path, args };
}

const gnuTar = new Map<string, Promise<boolean>>();

/**
 * Asked once per tar per process, like the library's own `tar --version`; not kept when tar could not be
 * started for lack of descriptors or memory (the answer, no GNU tar, then only costs that restore its 1 MiB records).
 */
function isGnuTar(path: string): Promise<boolean> {
  let answer = gnuTar.get(path);
  if (!answer) {
    answer = exec(path, ['--version'], { timeoutMs: TAR_PROBE_TIMEOUT_MS, allowFailure: true }).then(
      (r) => r.exitCode === 0 && r.stdout.includes('GNU tar'),
      (error: unknown) => {
        if (failedForLackOfResources(error)) gnuTar.delete(path);
        return false;
      },
    );
    gnuTar.set(path, answer);
  }
  return answer;
}

/** Queues all pieces at once (one syscall's worth each) and resolves when the last one is flushed. */
function write(stream: Writable, pieces: Buffer[]): Promise<void> {
  if (pieces.length === 0) return Promise.resolve();
  return new Promise((resolveWrite, reject) => {
    pieces.forEach((piece, i) =>
      stream.write(
        piece,
        i === pieces.length - 1 ? (error) => (error ? reject(error) : resolveWrite()) : undefined,
      ),
    );
  });
}

/** One `zstd -d | tar -x` run fed from the download, the tar stream watched on its way when asked. */
class Extraction {
  constructor(
    private readonly tar: TarCommand,
    private readonly workspace: string,
    private readonly watcher: TarMemberWatcher,
    private readonly signal: AbortSignal,
  ) {}

  async from(
    url: string,
    maxBytes: number,
    onRetry: (what: string, error: Error) => void,
  ): Promise<RangedDownloadResult> {
    const relay = await ChildOutputRelay.open().catch((error: unknown) => {
      throw new StreamUnusable(`no socket for zstd's output: ${errorMessage(error)}`);
    });
    const env = childEnv();
    let tar: ChildProcessByStdio<Writable, null, Readable>;
    let zstd: ChildProcessByStdio<Writable, null, Readable>;
    try {
      // In the C locale GNU tar writes pax names with the very bytes the watcher checked; in another one it
      // would convert them from UTF-8 to that locale's charset first.
      [tar, zstd] = await launchPair(
        [
          'tar',
          () =>
            spawn(this.tar.path, [...this.tar.args, '-C', this.workspace], {
              stdio: ['pipe', 'ignore', 'pipe'],
              env: { ...env, LC_ALL: 'C' },
            }),
        ],
        [
          'zstd',
          () => spawn('zstd', ['-d', '--long=30', '-c'], { stdio: ['pipe', relay.childEnd, 'pipe'], env }),
        ],
      );
    } catch (error) {
      // Nothing may stay behind: the relay's sockets would keep the step alive.
      relay.close();
      throw error instanceof NotStarted ? new StreamUnusable(error.message) : error;
    }
    relay.handedOver();
    // Every tar block is shown to the watcher before tar gets it.
    const piped = relay.into(tar.stdin, (chunk) => this.watcher.inspect(chunk));
    const exits = Promise.all([exitOf('zstd', zstd), exitOf('tar', tar)]);
    // The deadline ends the children too: with the download done, a tar stuck on its disk (or a zstd that never
    // exits) would otherwise hold the restore for good.
    const stopChildren = () => {
      zstd.kill('SIGKILL');
      tar.kill('SIGKILL');
    };
    this.signal.addEventListener('abort', stopChildren, { once: true });
    void exits.then(() => this.signal.removeEventListener('abort', stopChildren));
    zstd.stdin.on('error', () => undefined);
    let failure: unknown;
    let result: RangedDownloadResult = { bytes: 0, ranges: 0, retries: 0 };
    // Set when zstd stopped taking input: then it is exiting on its own and its complaint is the cause.
    let inputClosed = false;
    const feed = (pieces: Buffer[]) =>
      write(zstd.stdin, pieces).catch((error: unknown) => {
        inputClosed = true;
        throw error;
      });
    try {
      result = await downloadInOrder(url, feed, {
        chunkBytes: CHUNK_BYTES,
        concurrency: CONCURRENCY,
        idleTimeoutMs: IDLE_TIMEOUT_MS,
        retryBudget: RETRY_BUDGET,
        retry: RANGE_RETRY,
        maxBytes,
        signal: this.signal,
        onRetry,
      });
      zstd.stdin.end();
    } catch (error) {
      failure = error;
      if (inputClosed) {
        // zstd stopped reading: it is exiting on its own, and what it (or tar) says is the cause.
        let timer: NodeJS.Timeout | undefined;
        const grace = new Promise<boolean>((done) => (timer = setTimeout(() => done(false), EXIT_GRACE_MS)));
        zstd.stdin.destroy();
        const exited = await Promise.race([exits.then(() => true), grace]);
        clearTimeout(timer);
        if (!exited) failure = new Error(`zstd stopped reading and did not exit: ${errorMessage(error)}`);
      }
      // A failed download is the cause; whatever zstd or tar say about the input ending early is not.
      zstd.kill('SIGKILL');
      tar.kill('SIGKILL');
      zstd.stdin.destroy();
    }
    const [pipeError, [zstdExit, tarExit]] = await Promise.all([piped, exits]);
    // A refused member is the cause, whatever tar and zstd said about their input ending. So is an archive the
    // watcher cannot read as tar does: handed to the library, it would be extracted unchecked (tar -P), up to
    // whatever broke it.
    if (this.watcher.failure instanceof EntryRefused) throw this.watcher.failure;
    if (this.watcher.failure) throw new EntryRefused(this.watcher.failure.message);
    // GNU tar exits at the end-of-archive block without reading to the end of its input: with both children
    // content and the whole archive seen, tar's input closing early is no failure.
    const complete = zstdExit.code === 0 && tarExit.code === 0 && this.watcher.ended;
    // Killed by us when the download failed.
    const killed = failure !== undefined;
    const reason =
      failure !== undefined && !inputClosed
        ? errorMessage(failure)
        : // The first cause wins over its consequences (broken pipes, truncated input, children we killed).
          [
            ownFailure(zstdExit, killed),
            ownFailure(tarExit, killed),
            failure === undefined ? undefined : errorMessage(failure),
            pipeError && !complete && `tar stream: ${pipeError.message}`,
            !this.watcher.ended && 'the archive ended before its end-of-archive block',
          ].find((r) => r);
    if (reason) throw new StreamUnusable(reason);
    return result;
  }

  /**
   * `sha256:<hex>` of each regular file, by absolute path (only when hashing was asked for). What a path holds
   * is what its last member put there: a later link or directory at the same path leaves no digest for it.
   */
  fileDigests(): Record<string, string> | undefined {
    const digests = new Map<string, string>();
    for (const member of this.watcher.members) {
      const path = resolve(this.workspace, member.name);
      if (member.sha256) digests.set(path, `sha256:${member.sha256}`);
      else digests.delete(path);
    }
    return digests.size > 0 ? Object.fromEntries(digests) : undefined;
  }
}
