/**
 * Runs external tools (podman, skopeo, tar) with a timeout, captured output and an explicit environment.
 * Built on node:child_process rather than @actions/exec because every call here needs a hard timeout that kills
 * the process, and secrets must travel on stdin or in files, never on argv.
 *
 * Every child gets `childEnv(...)` of the environment it is given: no call site can hand a tool the action's
 * inputs or a credential by forgetting to filter.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { StringDecoder } from 'node:string_decoder';
import { signalGroup } from './process.js';
import { registeredSecrets, SECRET_ENV_VARS } from './secrets.js';
import { PROXY_ENV_VARS } from './proxy-env.js';

export interface ExecOptions {
  /**
   * Kill the process and everything it started (its process group: SIGTERM, then SIGKILL 5 s later) after this
   * many ms. Required: nothing runs unbounded.
   */
  timeoutMs: number;
  /** The base environment (default process.env); the child gets childEnv() of it. */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Written to stdin, then stdin is closed (how secrets are passed). */
  input?: string | Buffer;
  /** Do not throw on a non-zero exit; the caller inspects `exitCode`. */
  allowFailure?: boolean;
  /** Called with each complete line of stdout/stderr as it arrives (progress logging); longer lines in pieces. */
  onLine?: (line: string, stream: 'stdout' | 'stderr') => void;
}

export interface ExecResult {
  exitCode: number;
  /** The output; past OUTPUT_KEEP_BYTES only its head and tail, with a note of the bytes left out between. */
  stdout: string;
  stderr: string;
  durationMs: number;
}

export class ExecError extends Error {
  constructor(
    message: string,
    readonly result: ExecResult | undefined,
    /** Why the program could not be started at all (ENOENT: not on PATH), when that is the failure. */
    readonly spawnCode?: string,
  ) {
    super(message);
    this.name = 'ExecError';
  }
}

/** What a failed start says about the machine right now (descriptors, processes, memory), not about the program. */
const SHORTAGES = new Set(['EMFILE', 'ENFILE', 'EAGAIN', 'ENOMEM']);

/**
 * Whether `error` is a program that could not be started for lack of resources: a probe that failed so has
 * learnt nothing about the program, and is asked again next time instead of being remembered.
 */
export function failedForLackOfResources(error: unknown): boolean {
  return error instanceof ExecError && SHORTAGES.has(error.spawnCode ?? '');
}

/**
 * Below this length a secret only matches a variable's whole value: a 3-letter password found inside PATH
 * must not take PATH away from every child.
 */
const MIN_CONTAINED_SECRET = 8;

function holdsSecret(value: string, secrets: readonly string[]): boolean {
  return secrets.some((s) => value === s || (s.length >= MIN_CONTAINED_SECRET && value.includes(s)));
}

/**
 * The environment a child process may see: `env` without the action's inputs (INPUT_*: the runner passes every
 * input, passwords included, to the action's own process only), without the known credential variables, and
 * without any variable whose value holds a secret registered through the host.
 */
export function childEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const secrets = [...registeredSecrets()];
  const result: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined || name.toUpperCase().startsWith('INPUT_')) continue;
    // The proxy variables hold the proxy's password, and the tools we start need them to reach anything.
    const proxyVariable = PROXY_ENV_VARS.includes(name);
    if (SECRET_ENV_VARS.includes(name) || (!proxyVariable && holdsSecret(value, secrets))) continue;
    result[name] = value;
  }
  return result;
}

const KILL_GRACE_MS = 5000;
/**
 * How long the pipes may stay open once the child exited: a background process it left (a daemon a tool
 * starts) holds them as long as it lives, and the call must not wait for it.
 */
const DRAIN_MS = 1000;
/** Keep only the tail of huge outputs in error messages. */
const MESSAGE_TAIL_CHARS = 2000;
/** More output than any tool here prints when it works: past this the child is stopped, not buffered. */
export const OUTPUT_LIMIT_BYTES = 64 * 1024 * 1024;
/** What is kept of each stream: this much of its head and as much of its tail. */
const OUTPUT_KEEP_BYTES = 1024 * 1024;
/** onLine gets a line without end in pieces of this many characters. */
const LINE_PIECE_CHARS = 64 * 1024;

/** One stream's output, bounded: the head, the latest tail, and how many bytes between them were dropped. */
class BoundedOutput {
  private readonly head: Buffer[] = [];
  private headBytes = 0;
  private tail: Buffer[] = [];
  private tailBytes = 0;
  private omitted = 0;

  add(chunk: Buffer): void {
    if (this.headBytes < OUTPUT_KEEP_BYTES) {
      const part = chunk.subarray(0, OUTPUT_KEEP_BYTES - this.headBytes);
      this.head.push(part);
      this.headBytes += part.length;
      chunk = chunk.subarray(part.length);
    }
    if (chunk.length === 0) return;
    this.tail.push(chunk);
    this.tailBytes += chunk.length;
    while (this.tailBytes - this.tail[0]!.length >= OUTPUT_KEEP_BYTES) {
      const dropped = this.tail.shift()!;
      this.tailBytes -= dropped.length;
      this.omitted += dropped.length;
    }
  }

  toString(): string {
    const head = Buffer.concat(this.head).toString('utf8');
    const tail = Buffer.concat(this.tail).toString('utf8');
    return this.omitted > 0
      ? `${head}\n[… ${this.omitted} bytes of output left out …]\n${tail}`
      : head + tail;
  }
}

/** Calls onLine with each complete line, and with pieces of a line that grows past LINE_PIECE_CHARS. */
function lineSplitter(onLine: ((line: string) => void) | undefined): {
  push(chunk: Buffer): void;
  end(): void;
} {
  const decoder = new StringDecoder('utf8');
  let pending = '';
  return {
    push(chunk) {
      if (!onLine) return;
      pending += decoder.write(chunk);
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        for (let at = 0; at < line.length || at === 0; at += LINE_PIECE_CHARS) {
          onLine(line.slice(at, at + LINE_PIECE_CHARS));
        }
      }
      while (pending.length >= LINE_PIECE_CHARS) {
        onLine(pending.slice(0, LINE_PIECE_CHARS));
        pending = pending.slice(LINE_PIECE_CHARS);
      }
    },
    end() {
      pending += decoder.end();
      if (onLine && pending) onLine(pending);
      pending = '';
    },
  };
}

/**
 * Children run in process groups of their own, so a timeout reaches what they started too. A signal that ends
 * this process must then reach them itself (Ctrl-C no longer does): while any child runs, SIGINT/SIGTERM/SIGHUP
 * end every live group, then this process ends by the same signal. The groups get SIGTERM whatever came: a
 * shell's background jobs ignore SIGINT, and a tool's stop signal is SIGTERM. Only when nothing else listens:
 * a process that handles the signal itself does not end by it.
 */
const liveGroups = new Set<number>();
const FORWARDED: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

function forwardSignal(signal: NodeJS.Signals): void {
  // Another listener owns this signal (the CLI's trap, which keeps the process up until post has cleaned up):
  // the process does not end by it, so its children, cleanup commands included, are left to run.
  if (process.listenerCount(signal) > 1) return;
  for (const pid of liveGroups) signalGroup(pid, 'SIGTERM');
  for (const s of FORWARDED) process.removeListener(s, forwardSignal);
  process.kill(process.pid, signal);
}

function track(pid: number): () => void {
  if (liveGroups.size === 0) for (const s of FORWARDED) process.on(s, forwardSignal);
  liveGroups.add(pid);
  return () => {
    liveGroups.delete(pid);
    if (liveGroups.size === 0) for (const s of FORWARDED) process.removeListener(s, forwardSignal);
  };
}

export function exec(command: string, args: readonly string[], options: ExecOptions): Promise<ExecResult> {
  const started = Date.now();
  const name = `${command} ${args[0] ?? ''}`;
  return new Promise((resolve, reject) => {
    const couldNotRun = (e: Error) =>
      new ExecError(`could not run ${command}: ${e.message}`, undefined, (e as NodeJS.ErrnoException).code);
    let child: ChildProcessWithoutNullStreams;
    try {
      child = spawn(command, args, {
        cwd: options.cwd,
        env: childEnv(options.env),
        stdio: ['pipe', 'pipe', 'pipe'],
        detached: true,
      });
    } catch (e) {
      // What fork or exec refused other than ENOENT, EACCES, EAGAIN, EMFILE, ENFILE (ENOMEM, E2BIG) Node
      // throws here instead of emitting 'error': told the same way, with its code.
      reject(couldNotRun(e as Error));
      return;
    }
    if (child.pid === undefined) {
      // spawn reports EMFILE, EAGAIN and ENOENT a tick later, on a child that may have no stdio at all (EMFILE):
      // its 'error' is all there is to wait for, and unheard it would end the process.
      child.once('error', (e) => reject(couldNotRun(e)));
      return;
    }
    const pid = child.pid;
    const untrack = track(pid);
    const out = new BoundedOutput();
    const err = new BoundedOutput();
    let printed = 0;
    let stopped: 'timeout' | 'output' | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    let drainTimer: NodeJS.Timeout | undefined;
    let settled = false;
    const killGroup = (signal: NodeJS.Signals) => signalGroup(pid, signal);
    const stop = (why: 'timeout' | 'output') => {
      if (stopped) return;
      stopped = why;
      killGroup('SIGTERM');
      killTimer = setTimeout(() => killGroup('SIGKILL'), KILL_GRACE_MS);
    };
    const timer = setTimeout(() => stop('timeout'), options.timeoutMs);
    const cleanUp = () => {
      settled = true;
      clearTimeout(timer);
      clearTimeout(killTimer);
      clearTimeout(drainTimer);
      untrack();
    };

    const receive = (stream: 'stdout' | 'stderr', into: BoundedOutput) => {
      const lines = lineSplitter(options.onLine && ((line) => options.onLine!(line, stream)));
      child[stream].on('data', (chunk: Buffer) => {
        printed += chunk.length;
        if (printed > OUTPUT_LIMIT_BYTES) return stop('output');
        into.add(chunk);
        lines.push(chunk);
      });
      child[stream].on('end', () => lines.end());
    };
    receive('stdout', out);
    receive('stderr', err);
    // A child that exits without reading stdin closes the pipe; that is not our failure.
    child.stdin.on('error', () => undefined);
    if (options.input !== undefined) child.stdin.end(options.input);
    else child.stdin.end();

    child.on('error', (e) => {
      if (settled) return;
      cleanUp();
      reject(couldNotRun(e));
    });
    const finish = (code: number | null, signal: NodeJS.Signals | null) => {
      if (settled) return;
      cleanUp();
      child.stdout.destroy();
      child.stderr.destroy();
      const result: ExecResult = {
        exitCode: code ?? (signal ? 128 : 1),
        stdout: out.toString(),
        stderr: err.toString(),
        durationMs: Date.now() - started,
      };
      if (stopped === 'timeout') {
        reject(new ExecError(`${name} timed out after ${options.timeoutMs} ms`, result));
      } else if (stopped === 'output') {
        reject(
          new ExecError(
            `${name} printed more than ${OUTPUT_LIMIT_BYTES / 1024 / 1024} MiB of output and was stopped`,
            result,
          ),
        );
      } else if (result.exitCode !== 0 && !options.allowFailure) {
        const detail = (result.stderr.trim() || result.stdout.trim()).slice(-MESSAGE_TAIL_CHARS);
        reject(
          new ExecError(
            `${command} ${args.slice(0, 2).join(' ')} exited with ${result.exitCode}: ${detail}`,
            result,
          ),
        );
      } else {
        resolve(result);
      }
    };
    child.on('exit', (code, signal) => {
      // What a stopped child started goes with it; then the output it wrote is read to its end, for a bounded
      // time: a background process it left holding the pipes does not hold the call.
      if (stopped) killGroup('SIGKILL');
      child.once('close', () => finish(code, signal));
      // Counted from after this turn's reads (setImmediate runs after them), which take in all the child wrote
      // before it exited: a process that was not scheduled for a while must not lose its output to the timer.
      setImmediate(() => {
        if (!settled) drainTimer = setTimeout(() => finish(code, signal), DRAIN_MS);
      });
    });
  });
}
