/**
 * What the repository looks like on disk: every referenced path (exists? size? where does it really point?)
 * and every file and directory under the content directories (where the layout puts images.json's paths, as
 * written; see contentDirOf). Read-only; the plan is computed from these facts alone.
 */
import { lstatSync, readdirSync, type Stats } from 'node:fs';
import { lstat, readlink, realpath, stat } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { mapLimit } from '../../core/pool.js';
import { fileOf, listProblems, RepoError, type Catalog } from './catalog.js';
import { contentDirOf, IMAGES_DIR, insideRoot, parentOf, STATE_FILE_NAME } from './repo-paths.js';

export interface ReferencedFact {
  exists: boolean;
  /** Size of what the path resolves to (a regular file), when it exists. */
  size?: number;
  /** The real repository-relative path when it differs from the item path (symlinks inside the repo). */
  real?: string;
  /** Every symlink the item path resolves through (directories on the way, chain hops), repository-relative. */
  links?: string[];
}

/** An entry's own times (lstat: a symlink's, not its target's); plan.ts counts its age from the later one. */
export interface Times {
  mtimeMs: number;
  ctimeMs: number;
}

export interface FileFact extends Times {
  size: number;
  /** False for symlinks and other non-regular entries. */
  regular: boolean;
  /** The inode the scan saw: apply.ts deletes an entry only while it is still that one, unchanged. */
  ino?: number;
  /** The file system of `ino`: inode numbers repeat across the file systems mounted inside a repository. */
  dev?: number;
}

export interface RepoFacts {
  /** By normalised item path. */
  referenced: Map<string, ReferencedFact>;
  /** Files and symlinks under the content directories, by repository-relative path (no symlink on the way). */
  files: Map<string, FileFact>;
  /** Directories strictly inside the content directories; times only for those that held no files. */
  dirs: Map<string, { times?: Times }>;
  /** The content directories walked (outermost only; none reached through a symlink). */
  contentRoots: string[];
  /**
   * The symlinks index.json and images.json resolve through (a symlinked directory under images/, each hop of a
   * chain), repository-relative: clients fetch the metadata by its path as written, so they are as live as it.
   */
  metadataLinks: string[];
  /**
   * Directories inside the content directories that are none of this layout's: hidden ones (a file server's
   * `.snapshot` or `.zfs`, a `.git`) and `lost+found` (a content directory that is a file system of its own). Never
   * walked or judged, and the directory they are in is not empty.
   */
  foreignDirs: string[];
}

/** Filesystem requests in flight at once. */
const IO_CONCURRENCY = 64;

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

/** Hops after which the kernel gives up on a path (ELOOP); realpath has already succeeded, so this is a guard. */
const MAX_SYMLINK_HOPS = 40;

/**
 * The symlinks `path` resolves through, as the kernel follows them: a directory link on the way
 * (`images/pool -> blobs`) and every hop of a chain. A client fetches the path as written, so each of them is
 * as live as the file itself. Followed in absolute paths, as the kernel does: an absolute target may spell the
 * repository by another path (`/var/www/x` where the web server's path is a symlink to it) and lead back in, to
 * hops that are as live as the others. Only the links inside the repository are listed. Called only for paths
 * realpath resolved inside the repository.
 */
async function linksOnTheWay(root: string, path: string): Promise<string[]> {
  const links: string[] = [];
  // Real directories only (each link on the way replaced by its target), so `..` pops a segment as the kernel does.
  // The root is a real path: its own segments need no lstat.
  let done = root.split('/').filter((s) => s !== '');
  const pending = path.split('/');
  for (let hops = 0; pending.length > 0 && hops <= MAX_SYMLINK_HOPS;) {
    const segment = pending.shift()!;
    if (segment === '' || segment === '.') continue;
    if (segment === '..') {
      done.pop();
      continue;
    }
    const here = `/${[...done, segment].join('/')}`;
    if (!(await lstat(here)).isSymbolicLink()) {
      done.push(segment);
      continue;
    }
    hops++;
    const inside = insideRoot(root, here);
    if (inside !== undefined && inside !== '') links.push(inside);
    const target = await readlink(here);
    if (isAbsolute(target)) done = [];
    pending.unshift(...target.split('/'));
  }
  return links;
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
  if (rel === path) return { exists: true, size: info.size };
  return { exists: true, size: info.size, real: rel, links: await linksOnTheWay(root, path) };
}

function timesOf(info: Stats): Times {
  return { mtimeMs: info.mtimeMs, ctimeMs: info.ctimeMs };
}

function fileFact(info: Stats): FileFact {
  return { size: info.size, ...timesOf(info), regular: info.isFile(), ino: info.ino, dev: info.dev };
}

/**
 * Runs a sync fs call; a path that vanished meanwhile (someone else removed it), or that a file or a symlink loop
 * now blocks, gives undefined (as /proc/self/fd does where /proc is not mounted).
 */
export function attempt<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch (error) {
    if (isMissing(error)) return undefined;
    throw error;
  }
}

/** The directories of `dirs` that are not inside another one of them. */
function outermost(dirs: Iterable<string>): string[] {
  const kept = new Set<string>();
  for (const dir of [...new Set(dirs)].sort((a, b) => a.length - b.length)) {
    let inside = false;
    for (let d = parentOf(dir); d !== '' && !inside; d = parentOf(d)) inside = kept.has(d);
    if (!inside) kept.add(dir);
  }
  return [...kept].sort();
}

/**
 * Lists and lstats every entry under the content directories, never following symlinks. Synchronous on purpose:
 * the process has nothing else to do meanwhile, and for a tree of 16k entries the sync calls measured about
 * twice as fast as the promise API, whose per-call overhead (thread pool hop, promise) dominates on a local disk.
 */
function walk(root: string, contentDirs: Iterable<string>, facts: RepoFacts): void {
  const visitDir = (path: string) => {
    const entries = attempt(() => readdirSync(join(root, path), { withFileTypes: true })) ?? [];
    let files = 0;
    for (const entry of entries) {
      const child = `${path}/${entry.name}`;
      // A file server's snapshots (`.snapshot`, `.zfs`: read-only copies of files long unreferenced), a `.git`, or
      // fsck's `lost+found` (the files it recovered; root's, mode 0700: a walk as another user failed on it).
      if (entry.isDirectory() && (entry.name.startsWith('.') || entry.name === 'lost+found')) {
        facts.foreignDirs.push(child);
        continue;
      }
      // A symlink is never a directory here: it is not followed, and is judged (and removed) as a link.
      if (entry.isDirectory()) {
        facts.dirs.set(child, {});
        visitDir(child);
        continue;
      }
      const info = attempt(() => lstatSync(join(root, child)));
      if (!info) continue;
      files++;
      facts.files.set(child, fileFact(info));
    }
    // Only a directory without files can be removed for its age (see plan.ts): only then its times matter.
    if (files === 0 && facts.dirs.has(path)) {
      const info = attempt(() => lstatSync(join(root, path)));
      if (info) facts.dirs.set(path, { times: timesOf(info) });
    }
  };
  const realDir = new Map<string, boolean>();
  const isRealDir = (path: string): boolean => {
    let known = realDir.get(path);
    if (known === undefined) {
      const parent = parentOf(path);
      known =
        (parent === '' || isRealDir(parent)) && !!attempt(() => lstatSync(join(root, path)))?.isDirectory();
      realDir.set(path, known);
    }
    return known;
  };
  for (const dir of outermost(contentDirs)) {
    // Reached through a symlink anywhere on the way: what lies there is not ours to judge.
    if (!isRealDir(dir)) continue;
    facts.contentRoots.push(dir);
    visitDir(dir);
  }
}

/**
 * Temp files of an atomic write (`.<name>.<8 hex>.tmp`, see core/atomic.ts) of the metadata or the state file,
 * left by a process killed mid-write. They join the walked files, so the age rule deletes them in time.
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
      if (info?.isFile()) {
        facts.files.set(path, fileFact(info));
      }
    }
  }
}

/**
 * Walks the content directories, then resolves every referenced path, refusing any that escapes the repository
 * (all offenders listed). A path the walk saw as a regular file below real directories is inside the repository
 * by construction; only the rest (missing files, symlinks, paths outside the walked directories) are resolved
 * with realpath. Where a symlink leads never widens the walk: its target is kept while the link is referenced
 * (plan.ts) and otherwise left alone unless it lies in a content directory itself.
 */
export async function scanRepository(
  root: string,
  catalog: Catalog,
  extraPaths: Iterable<string>,
): Promise<RepoFacts> {
  const paths = new Set<string>();
  for (const p of catalog.products) for (const v of p.versions) for (const i of v.items) paths.add(i.path);
  const facts: RepoFacts = {
    referenced: new Map(),
    files: new Map(),
    dirs: new Map(),
    contentRoots: [],
    metadataLinks: [],
    foreignDirs: [],
  };
  const itemsByDir = new Map<string, string[]>();
  for (const path of paths) {
    const dir = contentDirOf(path);
    if (dir === undefined) continue;
    const items = itemsByDir.get(dir);
    if (items) items.push(path);
    else itemsByDir.set(dir, [path]);
  }
  // A directory only missing files are named in (a typo, a broken version) is no place images are kept: what
  // lies there is not judged. Usually the first item answers, so this costs one lstat per directory.
  const contentDirs = new Set<string>();
  for (const [dir, items] of itemsByDir) {
    if (items.some((p) => attempt(() => lstatSync(join(root, p))) !== undefined)) contentDirs.add(dir);
  }
  // The state file names files referenced earlier, so the directory of a product that has left images.json stays
  // in view; but only inside images/ (where both layouts keep images) or a top-level directory images.json uses:
  // the state file is repository content too (and older versions recorded symlink targets in it), so it never
  // widens what a prune may delete.
  const tops = new Set([IMAGES_DIR, ...[...contentDirs].map((d) => d.split('/')[0])]);
  for (const path of extraPaths) {
    const dir = contentDirOf(path);
    if (dir !== undefined && tops.has(dir.split('/')[0])) contentDirs.add(dir);
  }
  walk(root, contentDirs, facts);

  const slow: string[] = [];
  for (const path of paths) {
    const seen = facts.files.get(path);
    if (seen?.regular) facts.referenced.set(path, { exists: true, size: seen.size });
    else slow.push(path);
  }
  const results = await mapLimit(slow, IO_CONCURRENCY, (p) => factFor(root, p));
  const problems: string[] = [];
  results.forEach((r, i) => {
    if (typeof r === 'string') problems.push(`${slow[i]} ${r}`);
    else facts.referenced.set(slow[i]!, r);
  });
  if (problems.length > 0) {
    throw new RepoError(listProblems(`${catalog.images.path} references paths this prune refuses`, problems));
  }
  for (const doc of [catalog.index, catalog.images]) {
    if (doc.real !== undefined) facts.metadataLinks.push(...(await linksOnTheWay(root, doc.path)));
  }
  findAtomicLeftovers(root, [fileOf(catalog.index), fileOf(catalog.images), STATE_FILE_NAME], facts);
  return facts;
}
