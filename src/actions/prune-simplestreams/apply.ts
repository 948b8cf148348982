/**
 * The side-effect half of a prune, in the order that keeps the repository valid after a crash at any point:
 * deletions of files the metadata on disk no longer names -> state file (who became unreferenced when) ->
 * images.json -> index.json -> the other deletions -> final state -> empty directories. Metadata never references a
 * deleted file, and a file's grace period never restarts from zero because a crash lost its "unreferenced since"
 * time.
 */
import {
  closeSync,
  constants,
  lstatSync,
  openSync,
  readlinkSync,
  realpathSync,
  rmdirSync,
  unlinkSync,
} from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../../core/atomic.js';
import { readRegularFile } from '../../core/files.js';
import { ActionError, errorMessage } from '../../core/run.js';
import { fileOf, printableLines, serializeJson, type Catalog, type JsonDoc } from './catalog.js';
import type { FileAction, Plan } from './plan.js';
import { baseOf, LOCK_FILE_NAME, parentOf } from './repo-paths.js';
import { attempt, type FileFact } from './scan.js';
import { sameState, writeState, type UnreferencedSince } from './state-file.js';

export interface ApplyResult {
  imagesWritten: boolean;
  indexWritten: boolean;
  deleted: FileAction[];
  dirsRemoved: string[];
  /** Planned removals left alone: the entry, or the directory it is in, is no longer what the scan saw. */
  changed: string[];
  /**
   * Planned removals the file system refused (a read-only mount, a file of another owner, an immutable one), each
   * with why: the others still go, and the next prune tries these again.
   */
  failed: { path: string; error: string }[];
}

/**
 * Why removing `path` failed, by the repository path: node's message ends in the path it was given
 * (`EROFS: read-only file system, unlink '/proc/self/fd/23/x'`), which names nothing to the user.
 */
function failure(path: string, error: unknown): { path: string; error: string } {
  return { path, error: errorMessage(error).replace(/, \w+ '.*$/s, '') };
}

const codeOf = (error: unknown) => (error as NodeJS.ErrnoException).code;

/**
 * The directories entries are removed from, each opened once (O_NOFOLLOW) and proven to be the very directory at
 * its path in the repository (/proc/self/fd names where an open directory really is): whoever may write in the
 * repository (a publisher's account) can swap a directory for a symlink between the scan and the deletions, and
 * an unlink by path would follow it and delete outside the repository with this prune's rights. Entries are then
 * removed through /proc/self/fd/<fd>/<name>, which the kernel resolves from the open directory itself (unlinkat(2),
 * which node lacks), whatever is renamed or swapped after the check. Without /proc the path is checked right before
 * each removal: a narrower window, not none. One directory is held at a time (callers go directory by directory).
 */
class PinnedDirs {
  private current?: { dir: string; base?: string; fd?: number };

  constructor(private readonly realRoot: string) {}

  /** Where to remove `path` by, 'gone' when its directory is, 'changed' when that is not the one scanned. */
  at(path: string): string | 'gone' | 'changed' {
    const dir = parentOf(path);
    if (this.current?.dir !== dir) {
      this.close();
      this.current = this.pin(dir);
    }
    const { base } = this.current!;
    return base === undefined || base === 'gone' ? (base ?? 'changed') : `${base}/${baseOf(path)}`;
  }

  private pin(dir: string): { dir: string; base?: string; fd?: number } {
    const expected = join(this.realRoot, dir);
    if (process.platform === 'linux') {
      let fd: number;
      try {
        fd = openSync(expected, constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW);
      } catch (error) {
        // ELOOP: the directory itself is a symlink now; ENOTDIR: a file, or a symlink to one, on the way.
        const code = codeOf(error);
        if (code === 'ENOENT') return { dir, base: 'gone' };
        if (code === 'ELOOP' || code === 'ENOTDIR') return { dir };
        throw error;
      }
      const where = attempt(() => readlinkSync(`/proc/self/fd/${fd}`));
      if (where === expected) return { dir, base: `/proc/self/fd/${fd}`, fd };
      closeSync(fd);
      if (where !== undefined) return { dir };
    }
    const real = attempt(() => realpathSync(expected));
    if (real === expected) return { dir, base: expected };
    return { dir, base: attempt(() => lstatSync(expected)) === undefined ? 'gone' : undefined };
  }

  close(): void {
    if (this.current?.fd !== undefined) closeSync(this.current.fd);
    this.current = undefined;
  }
}

/** An inode across the file systems mounted inside the repository (a product directory on its own ZFS dataset). */
const inodeOf = (info: { dev?: number; ino?: number }) => `${info.dev}:${info.ino}`;

/**
 * Whether the entry at `at` is still the one the scan judged (same inode, unchanged since): a new upload is not.
 * Unlinking another name of an inode moves its ctime: for an inode this prune unlinked a name of (hard-linked
 * copies, as deduplicating tools leave them), ctime is not compared; a rewrite still shows in mtime or size.
 */
function unchanged(at: string, seen: FileFact, unlinked: ReadonlySet<string>): boolean | 'gone' {
  let now;
  try {
    now = lstatSync(at);
  } catch (error) {
    if (codeOf(error) === 'ENOENT') return 'gone';
    throw error;
  }
  return (
    (seen.ino === undefined || now.ino === seen.ino) &&
    (seen.dev === undefined || now.dev === seen.dev) &&
    (now.ctimeMs === seen.ctimeMs || unlinked.has(inodeOf(now))) &&
    now.mtimeMs === seen.mtimeMs &&
    now.size === seen.size &&
    now.isFile() === seen.regular
  );
}

/**
 * Deletes planned files directory by directory (see PinnedDirs), in one or more batches; `deleted` holds those
 * deleted or found gone, `changed` and `failed` those left.
 */
class FileDeletions {
  readonly deleted = new Set<FileAction>();
  readonly changed: string[] = [];
  readonly failed: ApplyResult['failed'] = [];
  /** Inodes a name was unlinked of, across batches (see unchanged). */
  private readonly unlinked = new Set<string>();

  constructor(private readonly realRoot: string) {}

  delete(files: readonly FileAction[]): void {
    const byDir = [...files].sort((a, b) => {
      const [x, y] = [parentOf(a.path), parentOf(b.path)];
      return x < y ? -1 : x > y ? 1 : 0;
    });
    const dirs = new PinnedDirs(this.realRoot);
    try {
      for (const file of byDir) {
        const at = dirs.at(file.path);
        const state = at === 'gone' || at === 'changed' ? at : unchanged(at, file.seen, this.unlinked);
        if (state === false || state === 'changed') {
          this.changed.push(file.path);
          continue;
        }
        if (state === true) {
          try {
            unlinkSync(at);
            if (file.seen.ino !== undefined) this.unlinked.add(inodeOf(file.seen));
          } catch (error) {
            if (codeOf(error) !== 'ENOENT') {
              this.failed.push(failure(file.path, error));
              continue;
            }
          }
        }
        this.deleted.add(file);
      }
    } finally {
      dirs.close();
    }
  }
}

/** Removes the planned directories that are still empty, deepest first, each through its pinned parent. */
function removeDirs(
  realRoot: string,
  planned: readonly string[],
  changed: string[],
  failed: ApplyResult['failed'],
): string[] {
  const removed: string[] = [];
  const parents = new PinnedDirs(realRoot);
  try {
    for (const dir of planned) {
      const at = parents.at(dir);
      if (at === 'gone') continue;
      if (at === 'changed') {
        changed.push(dir);
        continue;
      }
      try {
        rmdirSync(at);
        removed.push(dir);
      } catch (error) {
        // A publisher that does not take the lock may have put a file there meanwhile: then the dir stays.
        // ENOTDIR: a symlink or a file is there now, no directory the scan saw. EBUSY: a mount point (a file
        // system mounted inside the repository); it stays, as the mount is not this prune's to undo.
        const code = codeOf(error);
        if (code === 'ENOTDIR') changed.push(dir);
        else if (!['ENOTEMPTY', 'EEXIST', 'ENOENT', 'EBUSY'].includes(code ?? ''))
          failed.push(failure(dir, error));
      }
    }
  } finally {
    parents.close();
  }
  return removed;
}

/**
 * Fails unless each metadata file still holds `expected` (what the plan was made from, or what this prune wrote).
 * Publishers that do not take the lock (incus-simplestreams) may add a version meanwhile: writing the plan over it
 * would drop that version, and deleting by the plan could remove a file it references again (flat layouts name
 * files by content). Checked right before each step, which narrows that race to the moment between read and
 * rename; only the lock closes it.
 */
async function expectUnchanged(
  dirs: PinnedDirs,
  docs: readonly { doc: JsonDoc; expected: string }[],
): Promise<void> {
  for (const { doc, expected } of docs) {
    // The publisher may have put anything there meanwhile: a FIFO must not hold the prune (and its lock) until
    // someone writes to it, and a file longer than what was planned from is changed without reading all of it.
    const now = await readRegularFile(metadataAt(dirs, doc), Buffer.byteLength(expected) + 1).then(
      (bytes) => bytes.toString('utf8'),
      () => undefined,
    );
    if (now !== expected) throw changedMeanwhile(doc);
  }
}

function changedMeanwhile(doc: JsonDoc): ActionError {
  return new ActionError(
    `${printableLines(doc.path)} changed while this prune was planning (a publisher that does not take ${LOCK_FILE_NAME}?); ` +
      'it was left as the publisher wrote it, and no file it may name was deleted. Run the prune again.',
  );
}

/**
 * Where to read and replace a metadata file: in its directory as loaded (see PinnedDirs), so a `streams/v1` swapped
 * for a symlink meanwhile never has this prune write outside the repository. Valid until the next `dirs.at`.
 */
function metadataAt(dirs: PinnedDirs, doc: JsonDoc): string {
  const at = dirs.at(fileOf(doc));
  if (at === 'gone' || at === 'changed') throw changedMeanwhile(doc);
  return at;
}

export async function applyPlan(
  root: string,
  catalog: Catalog,
  plan: Plan,
  stateOnDisk: UnreferencedSince,
): Promise<ApplyResult> {
  const realRoot = realpathSync(root);
  const images = { doc: catalog.images, expected: catalog.images.text };
  const index = { doc: catalog.index, expected: catalog.index.text };
  const dirs = new PinnedDirs(realRoot);
  // Synchronous for the reason scan.ts's walk gives: 10k unlinks measured 2.5x faster than via the promise API.
  const deletions = new FileDeletions(realRoot);
  try {
    await expectUnchanged(dirs, [images, index]);
    // What the metadata on disk no longer names goes first: on a full file system, the state file and a new
    // images.json (tens of MB for a large repository) need the room, and a prune that failed for the lack of it
    // would never free any.
    deletions.delete(plan.delete.filter((f) => !f.named));
    let onDisk = stateOnDisk;
    if (!sameState(onDisk, plan.stateDuring)) {
      await writeState(root, plan.stateDuring);
      onDisk = plan.stateDuring;
    }
    if (plan.images) {
      await expectUnchanged(dirs, [images]);
      images.expected = serializeJson(plan.images, images.doc.style);
      await writeFileAtomic(metadataAt(dirs, images.doc), images.expected, images.doc.mode);
    }
    if (plan.index) {
      await expectUnchanged(dirs, [index]);
      index.expected = serializeJson(plan.index, index.doc.style);
      await writeFileAtomic(metadataAt(dirs, index.doc), index.expected, index.doc.mode);
    }
    const named = plan.delete.filter((f) => f.named);
    if (named.length > 0) await expectUnchanged(dirs, [images, index]);
    deletions.delete(named);
    return await finish(root, realRoot, plan, onDisk, deletions);
  } finally {
    dirs.close();
  }
}

/** The final state and empty directories, once the metadata names nothing removed here and the files are gone. */
async function finish(
  root: string,
  realRoot: string,
  plan: Plan,
  onDisk: UnreferencedSince,
  { deleted, changed, failed }: FileDeletions,
): Promise<ApplyResult> {
  // A file the file system would not let go is still unreferenced since then: the next prune tries it again at once.
  const stateAfter = new Map(plan.stateAfter);
  for (const { path } of failed) {
    const since = plan.stateDuring.get(path);
    if (since !== undefined) stateAfter.set(path, since);
  }
  if (!sameState(onDisk, stateAfter)) {
    await writeState(root, stateAfter);
  }
  // A directory that keeps a file the file system refused to remove is not empty: not one more failure to list.
  const keeping = new Set<string>();
  for (const { path } of failed) {
    for (let dir = parentOf(path); dir !== '' && !keeping.has(dir); dir = parentOf(dir)) keeping.add(dir);
  }
  const emptied = plan.dirsToRemove.filter((dir) => !keeping.has(dir));
  const dirsRemoved = removeDirs(realRoot, emptied, changed, failed);
  return {
    imagesWritten: plan.images !== undefined,
    indexWritten: plan.index !== undefined,
    deleted: plan.delete.filter((f) => deleted.has(f)),
    dirsRemoved,
    changed,
    failed,
  };
}
