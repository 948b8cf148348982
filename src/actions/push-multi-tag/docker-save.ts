/**
 * `docker save` output, read as it streams, written as an OCI layout in one pass. Both formats a Docker engine
 * writes are read through their manifest.json: the classic one (`<id>/layer.tar`, `<config>.json`, symlinks for
 * repeated layers) and Docker ≥ 25's (`blobs/sha256/...`, uncompressed, or as pulled with the containerd image
 * store, possibly gzip or zstd). manifest.json comes last, so each entry is kept as it arrives: small ones in
 * memory, an uncompressed layer gzip-compressed on the fly into the layout (its uncompressed digest checked
 * against the config's diff_ids at the end), an already compressed layer as it is. Given the engine's image ID,
 * the export must be that image and no other.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createGzip } from 'node:zlib';
import { digestOf } from '../../core/oci/digest.js';
import { MANIFEST_LIMIT, MediaType, type Descriptor } from '../../core/oci/media-types.js';
import { blobPath, REF_NAME_ANNOTATION } from '../../core/oci/layout.js';
import { checksumOk, readTar } from './tar-stream.js';
import { errorMessage } from '../../core/run.js';

const LAYER_TAR = 'application/vnd.oci.image.layer.v1.tar';
const CONFIG = 'application/vnd.oci.image.config.v1+json';
/**
 * JSON entries (configs, manifests) wait in memory for manifest.json to say what they are, up to this size;
 * anything that looks like a layer goes to the layout at once, whatever its size.
 */
const JSON_LIMIT = 16 * 1024 * 1024;
/**
 * All entries held in memory at once: an export's metadata is a few configs and manifests, while an archive of
 * thousands of 16 MiB entries that are no layer would otherwise all be held until the end.
 */
const HELD_LIMIT = 64 * 1024 * 1024;
/**
 * What is kept of every entry until manifest.json: its name and link target, and ENTRY_COST bytes (generously)
 * for the bookkeeping. At most 16,384 entries then, where an export has a few hundred.
 */
const NAMES_LIMIT = 16 * 1024 * 1024;
const ENTRY_COST = 1024;
/** At most this small, a layer can only be an empty tar: kept in memory too. */
const TINY = 1024;

export interface DockerSaveOptions {
  /** The OCI layout to write (created); the image is named `image` in its index.json. */
  layoutDir: string;
  /** gzip: compress uncompressed layers on the way; none: keep them as they are (for another compressor). */
  compress: 'gzip' | 'none';
  /** What is being read, for messages. */
  what: string;
  /**
   * The engine's ID of the image asked for (`sha256:<hex>`): the export must hold that image alone. It is the
   * config's digest (classic image store, podman) or, with the containerd image store, the digest of a manifest
   * or index in the export that leads to the exported config and layers.
   */
  imageId?: string;
  /**
   * The source's deadline. The export's stream carries it until its end; a compressed layer decompressed after
   * that, to check it against its diff_id, must stop at it too: a small gzip layer may inflate to terabytes.
   */
  signal?: AbortSignal;
}

/** A stored entry: its bytes in memory, or a blob already in the layout. */
interface StoredBlob {
  kind: 'blob';
  descriptor: Descriptor;
  /** The digest of the bytes as the export held them (before any compression on the way). */
  sourceDigest: string;
  /** The uncompressed digest, for a layer that came uncompressed. */
  diffId?: string;
}
type Stored = { kind: 'memory'; data: Buffer } | StoredBlob;

interface SaveManifestEntry {
  Config?: unknown;
  Layers?: unknown;
  RepoTags?: unknown;
}

function compressionOf(head: Buffer): 'gzip' | 'zstd' | undefined {
  if (head.length < 4) return undefined;
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
  return undefined;
}

/**
 * A tar's first header, by its checksum: not by the ustar magic, which a v7 tar lacks (`docker import` keeps a
 * tarball's bytes as given, and a classic engine exports them so), and a v7 layer over 16 MiB would be no layer.
 */
function isTar(head: Buffer): boolean {
  return head.length >= 512 && checksumOk(head.subarray(0, 512));
}

/** Collects at least `n` bytes of `body` (or all of it), and an iterable that replays them before the rest. */
async function peek(
  body: AsyncIterable<Buffer>,
  n: number,
): Promise<{ head: Buffer; all: AsyncIterable<Buffer> }> {
  const iterator = body[Symbol.asyncIterator]();
  const seen: Buffer[] = [];
  let length = 0;
  let done = false;
  while (length < n) {
    const next = await iterator.next();
    if (next.done) {
      done = true;
      break;
    }
    seen.push(next.value);
    length += next.value.length;
  }
  const all = (async function* () {
    yield* seen;
    if (done) return;
    for (let next = await iterator.next(); !next.done; next = await iterator.next()) yield next.value;
  })();
  return { head: Buffer.concat(seen), all };
}

/** Streams `data` into the layout as a blob, compressing an uncompressed layer when asked. */
async function storeBlob(
  layoutDir: string,
  data: AsyncIterable<Buffer> | Iterable<Buffer>,
  head: Buffer,
  compress: DockerSaveOptions['compress'],
): Promise<StoredBlob> {
  const compressed = compressionOf(head);
  const gzip = !compressed && compress === 'gzip';
  const diff = createHash('sha256');
  const blob = createHash('sha256');
  let size = 0;
  const temp = join(layoutDir, 'blobs', `.incoming-${randomBytes(6).toString('hex')}`);
  const stages: Array<NodeJS.ReadWriteStream | ((source: AsyncIterable<Buffer>) => AsyncIterable<Buffer>)> = [
    async function* (source: AsyncIterable<Buffer>) {
      for await (const chunk of source) {
        diff.update(chunk);
        yield chunk;
      }
    },
  ];
  if (gzip) stages.push(createGzip());
  stages.push(async function* (source: AsyncIterable<Buffer>) {
    for await (const chunk of source) {
      blob.update(chunk);
      size += chunk.length;
      yield chunk;
    }
  });
  try {
    await (pipeline as (...streams: unknown[]) => Promise<void>)(
      data,
      ...stages,
      createWriteStream(temp, { flags: 'wx' }),
    );
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
  const digest = `sha256:${blob.digest('hex')}`;
  const sourceDigest = `sha256:${diff.digest('hex')}`;
  await rename(temp, join(layoutDir, 'blobs', 'sha256', digest.slice(7)));
  const mediaType = compressed ? `${LAYER_TAR}+${compressed}` : gzip ? `${LAYER_TAR}+gzip` : LAYER_TAR;
  const descriptor: Descriptor = { mediaType, digest, size };
  return compressed
    ? { kind: 'blob', descriptor, sourceDigest }
    : { kind: 'blob', descriptor, sourceDigest, diffId: sourceDigest };
}

/**
 * Docker ≥ 25 names entries by their digest (`blobs/sha256/<hex>`): content that is not what its name says is
 * refused, as a pull refuses it. A layer is also checked against the config: an uncompressed one by its diff_id,
 * a compressed one through the manifest the image ID names (see leadsTo), or else decompressed.
 */
function checkContentAddress(what: string, name: string, digest: string): void {
  const m = /^blobs\/sha256\/([0-9a-f]{64})$/.exec(posix.normalize(name));
  if (m && `sha256:${m[1]}` !== digest) {
    throw new Error(`${what}: ${name} holds content ${digest}, not the content its name is the digest of.`);
  }
}

/** A path in the archive as docker load finds it: the archive is unpacked in a chroot, where `/x` and `../x` are `x`. */
function inArchive(path: string): string {
  return posix.join('/', path).slice(1);
}

function parseJson(data: Buffer, what: string): unknown {
  try {
    return JSON.parse(data.toString('utf8')) as unknown;
  } catch {
    throw new Error(`${what} is not JSON.`);
  }
}

/**
 * Reads a `docker save` stream into `options.layoutDir` and returns the manifest's descriptor. Throws when the
 * stream is not a complete export of exactly one image or contradicts itself.
 */
export async function dockerSaveToLayout(
  stream: AsyncIterable<Buffer>,
  options: DockerSaveOptions,
): Promise<Descriptor> {
  const { layoutDir, what } = options;
  await mkdir(join(layoutDir, 'blobs', 'sha256'), { recursive: true });
  const stored = new Map<string, Stored>();
  const links = new Map<string, string>();
  const unread = new Set<string>();
  let held = 0;
  let bookkept = 0;
  await readTar(stream, async (entry, body) => {
    // One name, one file, the last entry's, as unpacking the archive (docker load) would leave it: `a//b` and
    // `/a/b` are `a/b`, and a file after a symlink of its name replaces the link (and the other way round).
    const name = inArchive(entry.name);
    if (entry.type === 'file' || entry.type === 'symlink' || entry.type === 'hardlink') {
      // Bounded like the data held: an export that never ends, of entries with megabyte names, would be kept whole.
      bookkept += name.length + entry.linkname.length + ENTRY_COST;
      if (bookkept > NAMES_LIMIT) {
        throw new Error(
          `${what}: the export's entries and their names pass ${NAMES_LIMIT / 1024 / 1024} MiB; no image has that many.`,
        );
      }
    }
    const before = stored.get(name);
    if (before?.kind === 'memory') held -= before.data.length;
    stored.delete(name);
    links.delete(name);
    unread.delete(name);
    if (entry.type === 'symlink') {
      links.set(name, inArchive(posix.resolve('/', posix.dirname(name), entry.linkname)));
    } else if (entry.type === 'hardlink') {
      links.set(name, inArchive(entry.linkname));
    } else if (entry.type === 'file') {
      const { head, all } = await peek(body, 512);
      if (entry.size > TINY && (isTar(head) || compressionOf(head))) {
        const blob = await storeBlob(layoutDir, all, head, options.compress);
        checkContentAddress(what, name, blob.sourceDigest);
        stored.set(name, blob);
      } else if (entry.size <= JSON_LIMIT && held + entry.size <= HELD_LIMIT) {
        const parts: Buffer[] = [];
        for await (const part of all) parts.push(part);
        const data = Buffer.concat(parts);
        checkContentAddress(what, name, digestOf(data));
        stored.set(name, { kind: 'memory', data });
        held += data.length;
      }
      // Anything else is neither a layer nor metadata: left unread (an error if manifest.json names it).
      else unread.add(name);
    }
  });

  const tooLarge = (named: string) =>
    `${what}: ${named} is too large for image metadata (over ${JSON_LIMIT / 1024 / 1024} MiB, or past ${HELD_LIMIT / 1024 / 1024} MiB of metadata in all) and is no layer.`;
  const lookup = (name: unknown): { path: string; found?: Stored } => {
    let path = typeof name === 'string' ? inArchive(name) : '';
    for (let hops = 0; links.has(path) && hops < 16; hops++) path = links.get(path)!;
    return { path, found: stored.get(path) };
  };
  const resolve = (name: unknown): Stored => {
    const { path, found } = lookup(name);
    if (!found) {
      const named = typeof name === 'string' ? name : 'an entry';
      throw new Error(
        unread.has(path) ? tooLarge(named) : `${what}: the export lacks ${named} named in manifest.json.`,
      );
    }
    return found;
  };
  const index = stored.get('manifest.json');
  if (unread.has('manifest.json')) throw new Error(tooLarge('manifest.json'));
  if (!index || index.kind !== 'memory')
    throw new Error(`${what}: the export has no manifest.json; is it a docker save archive?`);
  const images = parseJson(index.data, `${what}: manifest.json`);
  if (!Array.isArray(images) || images.length !== 1) {
    // Named by their IDs (config digests) where the export holds their configs: what `docker images` shows.
    const ids = Array.isArray(images)
      ? images.map((i) => {
          const { found } = lookup((i as SaveManifestEntry | null)?.Config);
          return found?.kind === 'memory' ? digestOf(found.data) : 'an image without its config';
        })
      : [];
    throw new Error(
      `${what}: the export holds ${Array.isArray(images) ? images.length : 'no'} images${ids.length ? ` (${ids.join(', ')})` : ''}${options.imageId ? ` where ${options.imageId} was asked for` : ''}; expected one.`,
    );
  }
  // `null` is JSON too, where an object belongs.
  const image = (images[0] ?? {}) as SaveManifestEntry;
  const config = resolve(image.Config);
  if (config.kind !== 'memory') throw new Error(`${what}: the image config is a layer, not JSON.`);
  const diffIds = (
    parseJson(config.data, `${what}: the image config`) as { rootfs?: { diff_ids?: unknown } } | null
  )?.rootfs?.diff_ids;
  const layerNames = Array.isArray(image.Layers) ? (image.Layers as unknown[]) : [];
  if (!Array.isArray(diffIds) || diffIds.length !== layerNames.length) {
    throw new Error(
      `${what}: manifest.json lists ${layerNames.length} layers, the config ${Array.isArray(diffIds) ? diffIds.length : 'no'} diff_ids.`,
    );
  }

  const layers: Descriptor[] = [];
  const stores: StoredBlob[] = [];
  // A small layer listed again (an empty one, after each metadata-only step) is compressed once, however often.
  const converted = new Map<Buffer, StoredBlob>();
  for (const [i, name] of layerNames.entries()) {
    const entry = resolve(name);
    let layer: StoredBlob;
    if (entry.kind === 'blob') layer = entry;
    else {
      layer =
        converted.get(entry.data) ??
        (await storeBlob(layoutDir, [entry.data], entry.data.subarray(0, 512), options.compress));
      converted.set(entry.data, layer);
    }
    if (layer.diffId !== undefined && layer.diffId !== diffIds[i]) {
      throw new Error(
        `${what}: layer ${i + 1} (${String(name)}) has content ${layer.diffId}; the config says ${String(diffIds[i])}.`,
      );
    }
    layers.push(layer.descriptor);
    stores.push(layer);
  }
  const configDigest = digestOf(config.data);
  const boundByManifest =
    options.imageId !== undefined &&
    options.imageId !== configDigest &&
    leadsTo(
      options.imageId,
      configDigest,
      stores.map((l) => l.sourceDigest),
      (digest) => lookup(`blobs/sha256/${digest.slice(7)}`).found,
    );
  if (options.imageId !== undefined && options.imageId !== configDigest && !boundByManifest) {
    throw new Error(
      `${what}: the export is image ${configDigest}, not ${options.imageId}, the image asked for.`,
    );
  }
  // A layer the engine kept compressed was checked against its name in the export only. Where a manifest the
  // image ID names lists it, that binds it to the config; else its content is checked against the diff_id here.
  if (!boundByManifest) {
    const checked = new Set<string>();
    for (const [i, layer] of stores.entries()) {
      const key = `${layer.descriptor.digest} ${String(diffIds[i])}`;
      if (layer.diffId !== undefined || checked.has(key)) continue;
      checked.add(key);
      await checkCompressedDiffId(
        layoutDir,
        layer.descriptor,
        diffIds[i],
        `${what}: layer ${i + 1} (${String(layerNames[i])})`,
        options.signal,
      );
    }
  }
  const configDescriptor = await writeBlob(layoutDir, config.data, CONFIG);
  const manifest = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociManifest, config: configDescriptor, layers }),
  );
  if (manifest.length > MANIFEST_LIMIT) {
    throw new Error(
      `${what}: the image lists ${layers.length} layers; its manifest would be ${manifest.length} bytes, more than registries take (${MANIFEST_LIMIT}).`,
    );
  }
  const manifestDescriptor = await writeBlob(layoutDir, manifest, MediaType.ociManifest);
  await writeFile(join(layoutDir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  await writeFile(
    join(layoutDir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.ociIndex,
      manifests: [{ ...manifestDescriptor, annotations: { [REF_NAME_ANNOTATION]: 'image' } }],
    }),
  );
  return manifestDescriptor;
}

/**
 * Whether `id` (a containerd image store's image ID) is the digest of a manifest in the export that lists this
 * config and these layers, or of an index listing such a manifest: the export's blobs were each checked against
 * their names, so that chain binds the exported config and layers to the ID.
 */
function leadsTo(
  id: string,
  configDigest: string,
  layerDigests: readonly string[],
  blob: (digest: string) => Stored | undefined,
  depth = 0,
): boolean {
  const entry = /^sha256:[0-9a-f]{64}$/.test(id) ? blob(id) : undefined;
  // Hashed here, not taken from its name: the name may be a link to an entry of any name.
  if (entry?.kind !== 'memory' || digestOf(entry.data) !== id) return false;
  let doc: { config?: { digest?: unknown }; layers?: unknown; manifests?: unknown } | null;
  try {
    doc = JSON.parse(entry.data.toString('utf8')) as typeof doc;
  } catch {
    return false;
  }
  if (Array.isArray(doc?.manifests)) {
    return (
      depth < 2 &&
      (doc.manifests as Array<{ digest?: unknown } | null>).some(
        (m) =>
          typeof m?.digest === 'string' && leadsTo(m.digest, configDigest, layerDigests, blob, depth + 1),
      )
    );
  }
  const listed = Array.isArray(doc?.layers) ? (doc.layers as Array<{ digest?: unknown } | null>) : [];
  return (
    doc?.config?.digest === configDigest &&
    listed.length === layerDigests.length &&
    listed.every((l, i) => l?.digest === layerDigests[i])
  );
}

/** Decompresses a stored gzip layer and checks its content against the config's diff_id. */
async function checkCompressedDiffId(
  layoutDir: string,
  descriptor: Descriptor,
  diffId: unknown,
  what: string,
  signal: AbortSignal | undefined,
): Promise<void> {
  if (!descriptor.mediaType.endsWith('+gzip')) {
    // Node.js has no zstd before 22.15.
    throw new Error(
      `${what} is zstd-compressed and no manifest of the image lists it, so its content cannot be checked against the config.`,
    );
  }
  const hash = createHash('sha256');
  try {
    await pipeline(
      createReadStream(blobPath(layoutDir, descriptor.digest)),
      createGunzip(),
      async (source: AsyncIterable<Buffer>) => {
        for await (const chunk of source) hash.update(chunk);
      },
      signal ? { signal } : {},
    );
  } catch (error) {
    if (signal?.aborted) {
      throw new Error(
        `${what}: decompressing it to check it against the config's diff_id did not end before the source's deadline.`,
        { cause: error },
      );
    }
    if (!String((error as { code?: unknown }).code).startsWith('Z_')) throw error;
    // zlib's own words ("unexpected end of file") name no layer.
    throw new Error(`${what} is not a valid gzip stream (${errorMessage(error)}).`, { cause: error });
  }
  const content = `sha256:${hash.digest('hex')}`;
  if (content !== diffId)
    throw new Error(`${what} has content ${content}; the config says ${String(diffId)}.`);
}

async function writeBlob(layoutDir: string, data: Buffer, mediaType: string): Promise<Descriptor> {
  const digest = digestOf(data);
  await writeFile(join(layoutDir, 'blobs', 'sha256', digest.slice(7)), data);
  return { mediaType, digest, size: data.length };
}
