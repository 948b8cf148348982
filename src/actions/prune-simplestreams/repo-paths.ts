/**
 * Item paths from images.json are untrusted: a prune must never read, keep or delete anything outside the
 * repository because a JSON file said so. Paths are checked lexically here and against symlinks in scan.ts.
 */
import { isAbsolute, relative, sep } from 'node:path';

/** The repository's own files, at its root; a publisher that takes the same lock never interleaves with a prune. */
export const LOCK_FILE_NAME = '.image-ci-prune.lock';
export const STATE_FILE_NAME = '.image-ci-prune-state.json';
/** Metadata lives here; never a content directory, so the walk never considers streams/ files for deletion. */
export const STREAMS_DIR = 'streams';
/** Where both layouts keep image files. */
export const IMAGES_DIR = 'images';

/**
 * The directory the layout gives an item path, as written (never where a symlink leads): orphans are looked for
 * only under these. Flat (`images/<sha256>.squashfs`, incus-simplestreams): `images`. Nested
 * (`images/<os>/<release>/<arch>/<variant>/<serial>/<file>`, images.linuxcontainers.org): the product directory,
 * the parent of the version directory. Paths at the root, under streams/ or in a hidden directory (`.git` of a
 * repository published from git) have none.
 */
export function contentDirOf(path: string): string | undefined {
  const segments = path.split('/');
  if (segments.length < 2 || segments[0] === STREAMS_DIR) return undefined;
  if (segments.slice(0, -1).some((s) => s.startsWith('.'))) return undefined;
  return segments.slice(0, Math.max(1, segments.length - 2)).join('/');
}

/**
 * The repository file a path names, as clients resolve it (`./images//a` -> `images/a`), or why none: incus and
 * LXD join item and index paths to the repository URL with Go's path.Join / url.JoinPath, which clean the joined
 * path lexically, so a leading `/` stays inside the repository (`/images/a` is `images/a`) and an inner `..` pops
 * the segment before it (`images/x/../a` is `images/a`). Refused: a `..` that climbs above the repository (the
 * file clients would get is not the repository's), the root itself, empty paths and NUL bytes.
 */
export function normaliseRepoPath(raw: string): { path: string } | { error: string } {
  if (raw === '') return { error: 'is empty' };
  if (raw.includes('\0')) return { error: 'contains a NUL byte' };
  const segments: string[] = [];
  for (const segment of raw.split('/')) {
    if (segment === '' || segment === '.') continue;
    if (segment !== '..') segments.push(segment);
    else if (segments.pop() === undefined) return { error: "leads out of the repository ('..')" };
  }
  if (segments.length === 0) return { error: 'names the repository root' };
  return { path: segments.join('/') };
}

/** The path of `real` relative to `root` when it lies inside it, else undefined (both must be real paths). */
export function insideRoot(root: string, real: string): string | undefined {
  if (real === root) return '';
  const rel = relative(root, real);
  if (rel === '' || rel.startsWith(`..${sep}`) || rel === '..' || isAbsolute(rel)) return undefined;
  return rel.split(sep).join('/');
}

/** Sidecars (signatures, checksum lists) are never referenced by images.json; they follow their directory's items. */
export function isSidecar(name: string): boolean {
  return name.endsWith('.asc') || name.startsWith('SHA256SUMS');
}

export function parentOf(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? '' : path.slice(0, i);
}

export function baseOf(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}
