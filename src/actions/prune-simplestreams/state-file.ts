/**
 * The small state file at the repository root that remembers since when each file has been unreferenced, so
 * a file is deleted only after clients that cached the old images.json (incus: up to an hour) stopped asking
 * for it. Written atomically; a prune that crashes leaves either the old or the new state.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../../core/atomic.js';
import { RepoError } from './catalog.js';
import { normaliseRepoPath, STATE_FILE_NAME } from './repo-paths.js';

const STATE_VERSION = 1;

/** Repository-relative path -> epoch ms since when it has been unreferenced. */
export type UnreferencedSince = Map<string, number>;

export async function readState(root: string): Promise<UnreferencedSince> {
  const broken = (why: string) =>
    new RepoError(
      `${STATE_FILE_NAME} ${why}. It is written only by this action; remove it to start over ` +
        '(unreferenced files are then judged by their modification time).',
    );
  let text: string;
  try {
    // Opening a FIFO waits for a writer, for ever: only a regular file is read.
    if (!(await stat(join(root, STATE_FILE_NAME))).isFile()) throw broken('is not a regular file');
    text = await readFile(join(root, STATE_FILE_NAME), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
    throw error;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw broken('is not valid JSON');
  }
  const entries = (parsed as { unreferencedSince?: unknown }).unreferencedSince;
  if (typeof entries !== 'object' || entries === null || Array.isArray(entries)) {
    throw broken('has no "unreferencedSince" object');
  }
  const result: UnreferencedSince = new Map();
  for (const [path, since] of Object.entries(entries)) {
    const normalised = normaliseRepoPath(path);
    const ms = typeof since === 'string' ? Date.parse(since) : NaN;
    if ('error' in normalised || normalised.path !== path || Number.isNaN(ms)) {
      throw broken(`has an invalid entry '${path}'`);
    }
    result.set(path, ms);
  }
  return result;
}

export function sameState(a: UnreferencedSince, b: UnreferencedSince): boolean {
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}

export function serializeState(state: UnreferencedSince): string {
  const sorted = [...state.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const entries = Object.fromEntries(sorted.map(([k, v]) => [k, new Date(v).toISOString()]));
  return `${JSON.stringify({ version: STATE_VERSION, unreferencedSince: entries }, null, 2)}\n`;
}

export async function writeState(root: string, state: UnreferencedSince): Promise<void> {
  await writeFileAtomic(join(root, STATE_FILE_NAME), serializeState(state));
}
