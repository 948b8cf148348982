/** Starting the children of a pipeline, how each ended, and whether that is a failure of its own. */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { errorMessage } from './run.js';

const STDERR_TAIL = 2000;

export interface Exit {
  name: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  error?: Error;
  stderr: string;
}

export function exitOf(name: string, child: ChildProcess): Promise<Exit> {
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString('utf8')).slice(-STDERR_TAIL)));
  return new Promise((resolveExit) => {
    child.on('error', (error) => resolveExit({ name, code: null, signal: null, error, stderr }));
    child.on('close', (code, signal) => resolveExit({ name, code, signal, stderr }));
  });
}

/**
 * A child that could not start, exited with an error code of its own, or was killed by a signal neither we sent
 * (`killed`) nor its output's reader caused (SIGPIPE: whoever stopped reading is the cause).
 */
export function ownFailure(exit: Exit, killed: boolean): string | undefined {
  if (exit.error) return `${exit.name}: ${exit.error.message}`;
  if (exit.signal && !killed && exit.signal !== 'SIGPIPE') return `${exit.name} was killed by ${exit.signal}`;
  if (exit.code === 0 || exit.code === null) return undefined;
  // One log line: the child's distinct complaints, in order.
  const lines = [
    ...new Set(
      exit.stderr
        .split('\n')
        .map((l) => l.trim())
        .filter(Boolean),
    ),
  ];
  return `${exit.name} exited with ${exit.code}: ${lines.join('; ')}`;
}

/** A child of a pipeline could not be started; the message names it and says why. */
export class NotStarted extends Error {
  constructor(name: string, error: unknown) {
    super(`${name} could not be started: ${errorMessage(error)}`);
    this.name = 'NotStarted';
  }
}

/**
 * A child running with all its stdio, or NotStarted: spawn throws some failures (ELOOP, ENOMEM) and reports
 * others a tick later (EMFILE, EAGAIN, ENOENT), with no stdio then.
 */
async function launch<T extends ChildProcess>(name: string, start: () => T): Promise<T> {
  let child: T;
  try {
    child = start();
  } catch (error) {
    throw new NotStarted(name, error);
  }
  if (child.pid !== undefined) return child;
  const [error] = (await once(child, 'error')) as [Error];
  throw new NotStarted(name, error);
}

/**
 * Both children of a pipeline running, or neither: when the second cannot be started, the first is killed and
 * reaped before NotStarted is thrown. Left alone it would wait for input that never comes, or block for good
 * writing into a pipe nobody reads.
 */
export async function launchPair<A extends ChildProcess, B extends ChildProcess>(
  first: [string, () => A],
  second: [string, () => B],
): Promise<[A, B]> {
  const a = await launch(...first);
  try {
    return [a, await launch(...second)];
  } catch (error) {
    // 'exit', not 'close': an output nobody reads never closes.
    if (a.exitCode === null && a.signalCode === null) {
      const exited = once(a, 'exit');
      a.kill('SIGKILL');
      await exited;
    }
    for (const stream of a.stdio) stream?.destroy();
    throw error;
  }
}
