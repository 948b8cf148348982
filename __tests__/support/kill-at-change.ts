import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT } from './harness.js';

export interface Killed {
  signal: NodeJS.Signals | null;
  stderr: string;
}

const PRELOAD = join(REPO_ROOT, '__tests__/support/crash-after-change.mjs');

/**
 * Crash points without a hook in the product: runs `node args` with a preload that SIGKILLs the process right
 * after its `event`-th change to the filesystem (a file created, written, renamed or deleted, a directory made or
 * removed). The kill comes from inside, so it lands at that exact change on a loaded machine too. Returns
 * undefined when the process ended by itself before it made that many changes.
 */
export async function killAtChange(
  event: number,
  args: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<Killed | undefined> {
  const child = spawn(process.execPath, ['--import', PRELOAD, ...args], {
    env: { ...env, NODE_OPTIONS: '', IMAGE_CI_TEST_CRASH_AFTER: String(event) },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
  const signal = await new Promise<NodeJS.Signals | null>((resolve) =>
    child.on('close', (_code, s) => resolve(s)),
  );
  return signal === 'SIGKILL' ? { signal, stderr } : undefined;
}
