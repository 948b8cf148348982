/**
 * Job-scoped directories. Two kinds:
 * - scratch dirs (`$RUNNER_TEMP/ici-<random>`), recorded in state and removed by post;
 * - stable dirs (`$RUNNER_TEMP/ici-<name>`), the same path on every run of a workflow, because @actions/cache
 *   versions an entry by the path strings it was saved with: a random path would never hit again.
 * Paths stay short: macOS limits unix socket paths to 104 bytes.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Host } from './host.js';

const SCRATCH_STATE = 'ici-scratch-dirs';

export function runnerTemp(env: NodeJS.ProcessEnv = process.env): string {
  return env.RUNNER_TEMP || tmpdir();
}

/** The path of stableDir(name), not made: for a caller that must record it before anything exists there. */
export function stablePath(name: string, env: NodeJS.ProcessEnv = process.env): string {
  return join(runnerTemp(env), `ici-${name}`);
}

/** A directory whose path is the same in every run (for cache paths); not removed by post. */
export async function stableDir(name: string, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const dir = stablePath(name, env);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  return dir;
}

/** A fresh private directory that post removes (also when main failed after creating it). */
export async function scratchDir(host: Host, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const dir = join(runnerTemp(env), `ici-${randomBytes(3).toString('hex')}`);
  // Recorded before it exists: a main killed right after the mkdir still tells post about it.
  const known = readScratchDirs(host);
  known.push(dir);
  host.saveState(SCRATCH_STATE, JSON.stringify(known));
  await mkdir(dir, { recursive: true, mode: 0o700 });
  return dir;
}

function readScratchDirs(host: Host): string[] {
  const raw = host.getState(SCRATCH_STATE);
  if (!raw) return [];
  try {
    const parsed: unknown = JSON.parse(raw);
    return Array.isArray(parsed) ? parsed.filter((p): p is string => typeof p === 'string') : [];
  } catch {
    return [];
  }
}

/** Removes every scratch dir main created. Idempotent: a missing dir is fine. */
export async function removeScratchDirs(host: Host): Promise<string[]> {
  const dirs = readScratchDirs(host);
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  host.saveState(SCRATCH_STATE, '[]');
  return dirs;
}

/**
 * Runs a library call with RUNNER_TEMP pointing at a private dir, removed afterwards: @actions/cache makes a
 * temp dir per call in RUNNER_TEMP and deletes only the archive in it (a save leaves its tar manifest behind).
 * RUNNER_TEMP is process-wide, so calls using this must not overlap with code that reads it (the cache wrapper
 * runs library calls one at a time). A call abandoned at its deadline loses its temp files with the dir.
 */
export async function withPrivateRunnerTemp<T>(fn: () => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(runnerTemp(), 'ici-lib-'));
  const previous = process.env.RUNNER_TEMP;
  process.env.RUNNER_TEMP = dir;
  try {
    return await fn();
  } finally {
    if (previous === undefined) delete process.env.RUNNER_TEMP;
    else process.env.RUNNER_TEMP = previous;
    await rm(dir, { recursive: true, force: true });
  }
}
