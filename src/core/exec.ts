/**
 * Runs external tools (podman, skopeo, tar) with a timeout, captured output and an explicit environment.
 * Built on node:child_process rather than @actions/exec because every call here needs a hard timeout that kills
 * the process, and secrets must travel on stdin or in files, never on argv.
 *
 * Every child gets `childEnv(...)` of the environment it is given: no call site can hand a tool the action's
 * inputs or a credential by forgetting to filter.
 */
import { spawn } from 'node:child_process';
import { registeredSecrets, SECRET_ENV_VARS } from './secrets.js';

export interface ExecOptions {
  /** Kill the process (SIGTERM, then SIGKILL 5 s later) after this many ms. Required: nothing runs unbounded. */
  timeoutMs: number;
  /** The base environment (default process.env); the child gets childEnv() of it. */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Written to stdin, then stdin is closed (how secrets are passed). */
  input?: string | Buffer;
  /** Do not throw on a non-zero exit; the caller inspects `exitCode`. */
  allowFailure?: boolean;
  /** Called with each complete line of stdout/stderr as it arrives (progress logging). */
  onLine?: (line: string, stream: 'stdout' | 'stderr') => void;
}

export interface ExecResult {
  exitCode: number;
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
    if (SECRET_ENV_VARS.includes(name) || holdsSecret(value, secrets)) continue;
    result[name] = value;
  }
  return result;
}

const KILL_GRACE_MS = 5000;
/** Keep only the tail of huge outputs in error messages. */
const MESSAGE_TAIL_CHARS = 2000;

export function exec(command: string, args: readonly string[], options: ExecOptions): Promise<ExecResult> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: childEnv(options.env),
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    let killTimer: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGTERM');
      killTimer = setTimeout(() => child.kill('SIGKILL'), KILL_GRACE_MS);
    }, options.timeoutMs);

    const lineSplitter = (stream: 'stdout' | 'stderr') => {
      let pending = '';
      return (chunk: Buffer) => {
        if (!options.onLine) return;
        pending += chunk.toString('utf8');
        const lines = pending.split('\n');
        pending = lines.pop() ?? '';
        for (const line of lines) options.onLine(line, stream);
      };
    };
    const onOut = lineSplitter('stdout');
    const onErr = lineSplitter('stderr');
    child.stdout.on('data', (c: Buffer) => {
      out.push(c);
      onOut(c);
    });
    child.stderr.on('data', (c: Buffer) => {
      err.push(c);
      onErr(c);
    });
    // A child that exits without reading stdin closes the pipe; that is not our failure.
    child.stdin.on('error', () => undefined);
    if (options.input !== undefined) child.stdin.end(options.input);
    else child.stdin.end();

    child.on('error', (e) => {
      clearTimeout(timer);
      if (killTimer) clearTimeout(killTimer);
      reject(
        new ExecError(`could not run ${command}: ${e.message}`, undefined, (e as NodeJS.ErrnoException).code),
      );
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (killTimer) clearTimeout(killTimer);
      const result: ExecResult = {
        exitCode: code ?? (signal ? 128 : 1),
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        durationMs: Date.now() - started,
      };
      if (timedOut) {
        reject(new ExecError(`${command} ${args[0] ?? ''} timed out after ${options.timeoutMs} ms`, result));
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
    });
  });
}
