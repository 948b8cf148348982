/**
 * The image at its stable path (`$RUNNER_TEMP/ici-pvm/...`, the same every run, as @actions/cache needs) with a
 * small JSON record beside it saying what it is. Both files are cached together, so a run that cannot reach the
 * registry still learns the digest of what it restored and can verify every byte before using it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { copyFile, link, lstat, mkdir, readdir, rename, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { writeFileAtomic } from '../../core/atomic.js';
import { leftovers, removeRestored } from '../../core/cache-undo.js';
import { readRegularFile } from '../../core/files.js';
import { digestFile } from '../../core/oci/digest.js';
import { errorMessage } from '../../core/run.js';
import { fcosArtifact, isPlainFileName, withoutCredentials } from './fcos-stream.js';
import { diskKind, diskTypeFor, isSha256Digest } from './machine-os.js';
import type { ImageSource } from './image-source.js';
import type { MachineArch, VmType } from './podman-host.js';

export interface StoredImageRecord {
  /** The `image` the file came from (reference or URL). */
  source: string;
  /** The image-digest output: the disk manifest digest for registry images, the file's sha256 for URLs. */
  digest: string;
  /** sha256 of the stored file itself, checked after every restore. */
  fileDigest: string;
  /** The original file name (the disk layer's title annotation, or the URL's last segment). */
  title: string;
  size: number;
}

export interface StorePaths {
  image: string;
  record: string;
}

/**
 * Stable names: they must be known BEFORE the registry is asked (the cache paths are part of the cache
 * version), so they come from the inputs only. The extension stays `.<kind>.zst` because podman decompresses a
 * local image by its extension.
 */
export function storePaths(dir: string, source: ImageSource, vmType: VmType, arch: MachineArch): StorePaths {
  let name: string;
  if (source.kind === 'url') {
    const last = basename(new URL(source.url).pathname).replace(/[^A-Za-z0-9._-]/g, '_') || 'image';
    // Of the URL without `user:password@`: the path is logged, and a short hash of a password can be guessed.
    const tag = createHash('sha256').update(withoutCredentials(source.url)).digest('hex').slice(0, 12);
    name = `url-${tag}-${last}`;
  } else if (source.kind === 'fcos') {
    // Podman 4 decompresses a local image by its extension (xz, gz, zip).
    const { artifact, format } = fcosArtifact(vmType);
    const stream = source.stream.replace(/[^A-Za-z0-9._-]/g, '_');
    const tag = createHash('sha256').update(withoutCredentials(source.streamUrl)).digest('hex').slice(0, 12);
    name = `fcos-${stream}-${tag}-${artifact}-${arch}.${format}`;
  } else {
    name = `machine-os-${diskTypeFor(vmType)}-${arch}.${diskKind(vmType)}.zst`;
  }
  const image = join(dir, name);
  return { image, record: `${image}.json` };
}

/** A record is a few hundred bytes; what is larger (or no regular file: a restored symlink may point anywhere) is none. */
const RECORD_LIMIT = 64 * 1024;

/**
 * The record as a cache entry brought it back. Its digest becomes the image-digest output and names podman's
 * cache file, so every field is checked, not just typed.
 */
export async function readRecord(paths: StorePaths): Promise<StoredImageRecord | undefined> {
  try {
    const text = (await readRegularFile(paths.record, RECORD_LIMIT)).toString('utf8');
    const parsed = JSON.parse(text) as Partial<StoredImageRecord> | null;
    if (
      parsed &&
      isSha256Digest(parsed.digest) &&
      isSha256Digest(parsed.fileDigest) &&
      typeof parsed.source === 'string' &&
      typeof parsed.title === 'string' &&
      Number.isSafeInteger(parsed.size) &&
      parsed.size! >= 0
    ) {
      return parsed as StoredImageRecord;
    }
  } catch {
    // missing or unreadable: the caller treats it as nothing stored
  }
  return undefined;
}

export async function writeRecord(paths: StorePaths, record: StoredImageRecord): Promise<void> {
  await writeFileAtomic(paths.record, `${JSON.stringify(record, null, 2)}\n`);
}

export type Verification = { ok: true } | { ok: false; reason: string };

/**
 * Checks a restored image against its record. A corrupt or unrecorded file is deleted with its record, so the
 * next step can never pick up bad bytes. `restoredDigest` is the file's sha256 as the restore computed it from
 * the bytes it wrote (the streaming restore hashes on the way): then the file is not read a second time.
 */
export async function verifyStored(
  paths: StorePaths,
  record: StoredImageRecord | undefined,
  restoredDigest?: string,
): Promise<Verification> {
  let reason: string | undefined;
  if (!record) {
    reason = `no readable record ${paths.record}`;
  } else {
    try {
      // A restored digest is of the bytes a file member carried; a symlink (or FIFO) there is no such file, and
      // reading through it could block or read what the link points at.
      if (!(await lstat(paths.image)).isFile()) throw new Error('not a regular file');
      const actual = restoredDigest ?? (await digestFile(paths.image));
      if (actual !== record.fileDigest) reason = `sha256 is ${actual}, expected ${record.fileDigest}`;
    } catch (error) {
      reason = `cannot read ${paths.image}: ${errorMessage(error)}`;
    }
  }
  if (reason === undefined) return { ok: true };
  await removeStored(paths);
  return { ok: false, reason };
}

/**
 * Removes the image and its record, whatever a cache entry put at their paths: an entry may hold a directory
 * there (a plain rm fails on one, and on a directory of mode 000 inside it, and the step with it), and a refused
 * entry is a miss, not a failed step. Recursive only below our own stable paths; no symlink is followed.
 */
export async function removeStored(paths: StorePaths): Promise<void> {
  const left = [...(await removeRestored(paths.image)), ...(await removeRestored(paths.record))];
  if (left.length) throw new Error(`the refused cached image stays${leftovers(left)}`);
}

/** Moves a verified download into place (same directory, so the rename is atomic). */
export async function commitDownload(
  tempPath: string,
  paths: StorePaths,
  record: StoredImageRecord,
): Promise<void> {
  await rename(tempPath, paths.image);
  await writeRecord(paths, record);
}

/** The temporary name a copy into podman's cache has until it is complete: `.<file name>.<8 hex>.part`. */
export const PODMAN_CACHE_TEMP = /^\..+\.[0-9a-f]{8}\.part$/;

/**
 * Puts the image where podman looks before pulling (podman 5: `<cache dir>/<manifest hex>.<kind>.<compression>`,
 * podman 4: the stream's file name), as a hard link when possible (no second GiB on disk), else a copy. The name
 * comes from outside (a stream, a cached record): whatever is at it is replaced, so it must stay in `cacheDir`.
 * Then every other file `outdated` names is removed: podman clears its cache itself only when it pulls, which it
 * never does once the containers.conf names our file, so on a runner whose HOME persists each release would stay
 * (a GiB each).
 */
export async function placeInPodmanCache(
  imagePath: string,
  cacheDir: string,
  fileName: string,
  outdated: (name: string) => boolean = () => false,
  /** Told the temporary name before it exists, so a killed process's post can remove it. */
  beforeTemp: (temp: string) => void = () => undefined,
): Promise<{ target: string; removed: string[] }> {
  if (!isPlainFileName(fileName)) {
    throw new Error(`refusing ${JSON.stringify(fileName)} as a file name in podman's image cache`);
  }
  await mkdir(cacheDir, { recursive: true });
  const target = join(cacheDir, fileName);
  // Podman takes a file of this name as its image without checking it: a copy cut short (a cancelled job, a
  // full disk) must stay under another name, which podman ignores (and deletes when it pulls).
  const temp = join(cacheDir, `.${fileName}.${randomBytes(4).toString('hex')}.part`);
  beforeTemp(temp);
  try {
    try {
      await link(imagePath, temp);
    } catch {
      await copyFile(imagePath, temp);
    }
    await rename(temp, target);
  } finally {
    // rename leaves both names when they are links to one file already (the same image placed again).
    await rm(temp, { force: true });
  }
  const removed: string[] = [];
  for (const name of await readdir(cacheDir)) {
    if (name === fileName || !outdated(name)) continue;
    // Tidying up, not the step's work: the disk is in place. Podman only ever writes regular files here; what
    // else has such a name (a directory) is not ours to judge, and one we cannot remove stays.
    const path = join(cacheDir, name);
    const info = await lstat(path).catch(() => undefined);
    if (!info?.isFile()) continue;
    try {
      await rm(path, { force: true });
      removed.push(name);
    } catch {
      // stays: the next step (or podman's next pull) tries again
    }
  }
  return { target, removed };
}
