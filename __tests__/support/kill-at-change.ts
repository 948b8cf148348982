import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
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
  return runWithPreload(args, { ...env, IMAGE_CI_TEST_CRASH_AFTER: String(event) });
}

/**
 * As killAtChange, with `signal` (SIGTERM, SIGINT: a cancelled workflow run) instead of SIGKILL, which the process
 * may handle: what it printed, and whether it ended by that signal (undefined when it ended otherwise).
 */
export async function signalAtChange(
  event: number,
  signal: NodeJS.Signals,
  args: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<Killed | undefined> {
  return runWithPreload(
    args,
    { ...env, IMAGE_CI_TEST_CRASH_AFTER: String(event), IMAGE_CI_TEST_CRASH_SIGNAL: signal },
    signal,
  );
}

/**
 * Writes `<dir>/crash-main.mjs`, which runs `action`'s bundled main under the preload: a main script for the
 * runner harness that dies at the IMAGE_CI_TEST_CRASH_AFTER-th change, also with a root's node (the checkout has
 * its own path there). Returns its path.
 */
export function crashingMain(dir: string, action: string): string {
  const path = join(dir, 'crash-main.mjs');
  const url = (file: string) => JSON.stringify(pathToFileURL(file).href);
  writeFileSync(
    path,
    `await import(${url(PRELOAD)});
await import(${url(join(REPO_ROOT, 'dist', action, 'main.js'))});
`,
  );
  return path;
}

/** How many changes `node args` makes when nothing kills it: the crash points a sweep has to cover. */
export async function countChanges(
  args: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'ici-changes-'));
  try {
    const file = join(dir, 'count');
    await runWithPreload(args, { ...env, IMAGE_CI_TEST_CRASH_AFTER: '0', IMAGE_CI_TEST_CHANGES_FILE: file });
    return Number(readFileSync(file, 'utf8'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function runWithPreload(
  args: readonly string[],
  env: NodeJS.ProcessEnv,
  expected: NodeJS.Signals = 'SIGKILL',
): Promise<Killed | undefined> {
  const child = spawn(process.execPath, ['--import', PRELOAD, ...args], {
    env: { ...env, NODE_OPTIONS: '' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
  const signal = await new Promise<NodeJS.Signals | null>((resolve) =>
    child.on('close', (_code, s) => resolve(s)),
  );
  return signal === expected ? { signal, stderr } : undefined;
}

/**
 * Where a sweep kills a run that makes `total` changes: each of the first `dense` (taking a lock, the first
 * writes), then every `stride`-th, and the last one; in order, no repeats.
 */
export function crashPoints(total: number, dense = 12, stride = 3): number[] {
  const points = new Set<number>();
  for (let event = 1; event <= total; event += event < dense ? 1 : stride) points.add(event);
  if (total > 0) points.add(total);
  return [...points];
}
