/**
 * What the repository looks like on disk: every referenced path (exists? size? where does it really point?)
 * and every file and directory under the content roots (the top-level directories images.json points into).
 * Read-only; the plan is computed from these facts alone.
 */
import { lstatSync, readdirSync } from 'node:fs';
import { lstat, realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { listProblems, RepoError, type Catalog } from './catalog.js';
import { insideRoot, parentOf, STATE_FILE_NAME, STREAMS_DIR } from './repo-paths.js';

export interface ReferencedFact {
  exists: boolean;
  /** Size of what the path resolves to (a regular file), when it exists. */
  size?: number;
  /** The real repository-relative path when it differs from the item path (symlinks inside the repo). */
  real?: string;
}

export interface FileFact {
  size: number;
  mtimeMs: number;
  /** False for symlinks and other non-regular entries. */
  regular: boolean;
}

export interface RepoFacts {
  /** By normalised item path. */
  referenced: Map<string, ReferencedFact>;
  /** Files and symlinks under the content roots, by real repository-relative path. */
  files: Map<string, FileFact>;
  /** Directories strictly inside the content roots; mtime only for those that held no files. */
  dirs: Map<string, { mtimeMs?: number }>;
  contentRoots: string[];
}

/** Filesystem requests in flight at once. */
const IO_CONCURRENCY = 64;

/** Runs fn over items with at most `limit` in flight; results keep the input order. */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

function isMissing(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP';
}

/** The real path of the deepest existing ancestor of `path` (so a missing file under a symlinked dir is judged too). */
async function realAncestor(root: string, path: string): Promise<string> {
  for (let p = path; ; p = parentOf(p)) {
    try {
      return await realpath(join(root, p));
    } catch (error) {
      if (!isMissing(error) || p === '') throw error;
    }
  }
}

async function factFor(root: string, path: string): Promise<ReferencedFact | string> {
  const abs = join(root, path);
  let real: string;
  try {
    real = await realpath(abs);
  } catch (error) {
    if (!isMissing(error)) throw error;
    // Missing (or a dangling symlink): the link's own target must stay inside the repo too.
    const ancestor = await realAncestor(root, parentOf(path));
    if (insideRoot(root, ancestor) === undefined) return 'resolves outside the repository (symlink)';
    try {
      const link = await lstat(abs);
      if (link.isSymbolicLink()) return 'is a dangling symlink';
    } catch (lstatError) {
      if (!isMissing(lstatError)) throw lstatError;
    }
    return { exists: false };
  }
  const rel = insideRoot(root, real);
  if (rel === undefined || rel === '') return 'resolves outside the repository (symlink)';
  const info = await stat(real);
  if (!info.isFile()) return 'is not a regular file';
  return rel === path ? { exists: true, size: info.size } : { exists: true, size: info.size, real: rel };
}

/** Runs a sync fs call; a path that vanished meanwhile (someone else removed it) gives undefined. */
function attempt<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw error;
  }
}

/**
 * Lists and lstats every entry under the content roots, never following symlinks. Synchronous on purpose: the
 * process has nothing else to do meanwhile, and for a tree of 16k entries the sync calls measured about twice
 * as fast as the promise API, whose per-call overhead (thread pool hop, promise) dominates on a local disk.
 */
function walk(root: string, tops: readonly string[], facts: RepoFacts): void {
  const visitDir = (path: string) => {
    const entries = attempt(() => readdirSync(join(root, path), { withFileTypes: true })) ?? [];
    let files = 0;
    for (const entry of entries) {
      const child = `${path}/${entry.name}`;
      // A symlink is never a directory here: it is not followed.
      if (entry.isDirectory()) {
        facts.dirs.set(child, {});
        visitDir(child);
        continue;
      }
      const info = attempt(() => lstatSync(join(root, child)));
      if (!info) continue;
      files++;
      facts.files.set(child, { size: info.size, mtimeMs: info.mtimeMs, regular: info.isFile() });
    }
    // Only a directory without files can be removed for its age (see plan.ts): only then its mtime matters.
    if (files === 0 && facts.dirs.has(path)) {
      const info = attempt(() => lstatSync(join(root, path)));
      if (info) facts.dirs.set(path, { mtimeMs: info.mtimeMs });
    }
  };
  for (const top of tops) {
    // A content root that is itself a symlink is not walked: its files are not ours to judge.
    if (!attempt(() => lstatSync(join(root, top)))?.isDirectory()) continue;
    facts.contentRoots.push(top);
    visitDir(top);
  }
}

/**
 * Temp files of an atomic write (`.<name>.<8 hex>.tmp`, see core/atomic.ts) of the metadata or the state file,
 * left by a process killed mid-write. They join the walked files, so the mtime rule deletes them in time.
 */
function findAtomicLeftovers(root: string, targets: readonly string[], facts: RepoFacts): void {
  const wanted = new Set(targets);
  for (const dir of new Set(targets.map(parentOf))) {
    for (const name of attempt(() => readdirSync(join(root, dir))) ?? []) {
      const m = /^\.(.+)\.[0-9a-f]{8}\.tmp$/.exec(name);
      const target = m && (dir ? `${dir}/${m[1]}` : m[1]!);
      if (!target || !wanted.has(target)) continue;
      const path = dir ? `${dir}/${name}` : name;
      const info = attempt(() => lstatSync(join(root, path)));
      if (info?.isFile()) facts.files.set(path, { size: info.size, mtimeMs: info.mtimeMs, regular: true });
    }
  }
}

function topOf(path: string): string | undefined {
  const top = path.split('/')[0]!;
  return path.includes('/') && top !== STREAMS_DIR ? top : undefined;
}

/**
 * Walks the content roots (top-level directories that referenced paths or the state file point into), then
 * resolves every referenced path, refusing any that escapes the repository (all offenders listed). A path the
 * walk saw as a regular file below real directories is inside the repository by construction; only the rest
 * (missing files, symlinks, paths outside the walked roots) are resolved with realpath.
 */
export async function scanRepository(
  root: string,
  catalog: Catalog,
  extraPaths: Iterable<string>,
): Promise<RepoFacts> {
  const paths = new Set<string>();
  for (const p of catalog.products) for (const v of p.versions) for (const i of v.items) paths.add(i.path);
  const facts: RepoFacts = { referenced: new Map(), files: new Map(), dirs: new Map(), contentRoots: [] };
  const roots = new Set<string>();
  for (const path of [...paths, ...extraPaths]) {
    const top = topOf(path);
    if (top !== undefined) roots.add(top);
  }
  walk(root, [...roots].sort(), facts);

  const slow: string[] = [];
  for (const path of paths) {
    const seen = facts.files.get(path);
    if (seen?.regular) facts.referenced.set(path, { exists: true, size: seen.size });
    else slow.push(path);
  }
  const results = await mapLimit(slow, IO_CONCURRENCY, (p) => factFor(root, p));
  const problems: string[] = [];
  const unwalked = new Set<string>();
  results.forEach((r, i) => {
    if (typeof r === 'string') {
      problems.push(`${slow[i]} ${r}`);
      return;
    }
    facts.referenced.set(slow[i]!, r);
    const top = r.real === undefined ? undefined : topOf(r.real);
    if (top !== undefined && !facts.contentRoots.includes(top)) unwalked.add(top);
  });
  if (problems.length > 0) {
    throw new RepoError(listProblems(`${catalog.images.path} references paths this prune refuses`, problems));
  }
  // Symlinks inside the repository may lead into a top-level directory nothing names directly.
  if (unwalked.size > 0) walk(root, [...unwalked].sort(), facts);
  findAtomicLeftovers(root, [catalog.index.path, catalog.images.path, STATE_FILE_NAME], facts);
  facts.contentRoots.sort();
  return facts;
}
