/**
 * What the repository looks like on disk: every referenced path (exists? size? where does it really point?)
 * and every file and directory under the content roots (the top-level directories images.json points into).
 * Read-only; the plan is computed from these facts alone.
 */
import { lstat, readdir, realpath, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { listProblems, RepoError, type Catalog } from './catalog.js';
import { insideRoot, parentOf, STREAMS_DIR } from './repo-paths.js';

export interface ReferencedFact {
  exists: boolean;
  /** Size of what the path resolves to (a regular file), when it exists. */
  size?: number;
  /** The real repository-relative path when it differs from the item path (symlinks inside the repo). */
  real?: string;
}

export interface EntryFact {
  size: number;
  mtimeMs: number;
}

export interface RepoFacts {
  /** By normalised item path. */
  referenced: Map<string, ReferencedFact>;
  /** Files and symlinks under the content roots, by real repository-relative path. */
  files: Map<string, EntryFact>;
  /** Directories strictly inside the content roots. */
  dirs: Map<string, EntryFact>;
  contentRoots: string[];
}

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

async function walk(root: string, dir: string, facts: RepoFacts): Promise<void> {
  let entries;
  try {
    entries = await readdir(join(root, dir), { withFileTypes: true });
  } catch (error) {
    if (isMissing(error)) return; // removed by someone else between listing and reading
    throw error;
  }
  const subdirs: string[] = [];
  await mapLimit(entries, IO_CONCURRENCY, async (entry) => {
    const path = `${dir}/${entry.name}`;
    try {
      const info = await lstat(join(root, path));
      const fact = { size: info.size, mtimeMs: info.mtimeMs };
      if (info.isDirectory()) {
        facts.dirs.set(path, fact);
        subdirs.push(path);
      } else {
        facts.files.set(path, fact);
      }
    } catch (error) {
      if (!isMissing(error)) throw error;
    }
  });
  for (const sub of subdirs) await walk(root, sub, facts);
}

/**
 * Resolves every referenced path (refusing any that escapes the repository, with all offenders listed) and
 * walks the content roots. `extraRoots` are top-level directories known from the state file.
 */
export async function scanRepository(
  root: string,
  catalog: Catalog,
  extraPaths: Iterable<string>,
): Promise<RepoFacts> {
  const paths = new Set<string>();
  for (const p of catalog.products) for (const v of p.versions) for (const i of v.items) paths.add(i.path);
  const pathList = [...paths];
  const results = await mapLimit(pathList, IO_CONCURRENCY, (p) => factFor(root, p));
  const facts: RepoFacts = { referenced: new Map(), files: new Map(), dirs: new Map(), contentRoots: [] };
  const problems: string[] = [];
  results.forEach((r, i) => {
    if (typeof r === 'string') problems.push(`${pathList[i]} ${r}`);
    else facts.referenced.set(pathList[i]!, r);
  });
  if (problems.length > 0) {
    throw new RepoError(listProblems(`${catalog.images.path} references paths this prune refuses`, problems));
  }
  const roots = new Set<string>();
  const addRoot = (path: string) => {
    const top = path.split('/')[0]!;
    if (path.includes('/') && top !== STREAMS_DIR) roots.add(top);
  };
  for (const [path, fact] of facts.referenced) addRoot(fact.real ?? path);
  for (const path of extraPaths) addRoot(path);
  for (const top of [...roots].sort()) {
    try {
      // A content root that is itself a symlink is not walked: its files are not ours to judge.
      if (!(await lstat(join(root, top))).isDirectory()) continue;
    } catch (error) {
      if (isMissing(error)) continue;
      throw error;
    }
    facts.contentRoots.push(top);
    await walk(root, top, facts);
  }
  return facts;
}
