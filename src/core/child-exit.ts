/** How a child of a pipeline ended, and whether that is a failure of its own. */
import type { ChildProcess } from 'node:child_process';

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
