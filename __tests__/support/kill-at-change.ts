import { spawn } from 'node:child_process';
import { watch } from 'node:fs';

export interface Killed {
  signal: NodeJS.Signals | null;
  stderr: string;
}

/**
 * Crash points without a hook in the product: starts `command args` and SIGKILLs it right after the `event`-th
 * change inotify reports anywhere under `dir` (a file created, written, renamed or deleted). The kill lands a
 * moment after that change, as a real crash would. Returns undefined when the process ended by itself before it
 * made that many changes.
 */
export async function killAtChange(
  dir: string,
  event: number,
  command: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<Killed | undefined> {
  const child = spawn(command, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
  let seen = 0;
  const watcher = watch(dir, { recursive: true }, () => {
    if (++seen === event) child.kill('SIGKILL');
  });
  try {
    const signal = await new Promise<NodeJS.Signals | null>((resolve) =>
      child.on('close', (_code, s) => resolve(s)),
    );
    return signal === 'SIGKILL' ? { signal, stderr } : undefined;
  } finally {
    watcher.close();
  }
}
