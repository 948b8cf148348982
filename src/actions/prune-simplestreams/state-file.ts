/**
 * The small state file at the repository root that remembers since when each file has been unreferenced, so
 * a file is deleted only after clients that cached the old images.json (incus: up to an hour) stopped asking
 * for it. Written atomically; a prune that crashes leaves either the old or the new state.
 */
import { join } from 'node:path';
import { writeFileAtomic } from '../../core/atomic.js';
import { FILE_TOO_LARGE, NOT_A_REGULAR_FILE, readRegularFile } from '../../core/files.js';
import { formatBytes } from '../../core/summary.js';
import { RepoError } from './catalog.js';
import { normaliseRepoPath, STATE_FILE_NAME } from './repo-paths.js';

const STATE_VERSION = 1;

/** Repository-relative path -> epoch ms since when it has been unreferenced. */
export type UnreferencedSince = Map<string, number>;

/** A path and a time per unreferenced file: far less than this even for a repository of a million files. */
const STATE_LIMIT = 256 * 1024 * 1024;

export async function readState(root: string): Promise<UnreferencedSince> {
  const broken = (why: string) =>
    new RepoError(
      `${STATE_FILE_NAME} ${why}. It is written only by this action; remove it to start over ` +
        '(unreferenced files are then judged by when they last changed: the later of mtime and ctime).',
    );
  let text: string;
  try {
    // Opening a FIFO waits for a writer, for ever: only a regular file is read (and opened).
    text = (await readRegularFile(join(root, STATE_FILE_NAME), STATE_LIMIT)).toString('utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return new Map();
    if (code === NOT_A_REGULAR_FILE) throw broken('is not a regular file');
    if (code === FILE_TOO_LARGE) throw broken(`is larger than ${formatBytes(STATE_LIMIT)}`);
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
