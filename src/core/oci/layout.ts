/**
 * Reads an image out of an OCI image layout directory: the manifest (or index) a ref names in index.json, its
 * child manifests, and the configs and layers they use. Every manifest is checked against its digest as it is
 * read; blobs are checked as they are streamed to a registry.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { readRegularFile } from '../files.js';
import { errorMessage } from '../run.js';
import { verifyDigest } from './digest.js';
import { isValidDigest } from './reference.js';
import { externalText } from './response.js';
import { MANIFEST_LIMIT, isIndexMediaType, type Descriptor } from './media-types.js';
import { mapLimit } from '../pool.js';

export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';

export interface ManifestNode {
  digest: string;
  mediaType: string;
  bytes: Buffer;
  /** Child manifests of an index, in index order. */
  children: ManifestNode[];
  /** Config and layers of an image manifest. */
  blobs: Descriptor[];
}

export interface LocalImage {
  dir: string;
  root: ManifestNode;
  /** Every manifest, children before the index that lists them (the order a registry must receive them). */
  manifests: ManifestNode[];
  /** Configs and layers of all manifests, each once. */
  blobs: Descriptor[];
}

export function blobPath(dir: string, digest: string): string {
  const colon = digest.indexOf(':');
  return join(dir, 'blobs', digest.slice(0, colon), digest.slice(colon + 1));
}

interface IndexJson {
  manifests?: Descriptor[];
}

interface ManifestJson {
  mediaType?: string;
  manifests?: Descriptor[];
  config?: Descriptor;
  layers?: Descriptor[];
}

/** index.json lists every image of the layout: room for tens of thousands of them, not for a disk image. */
export const INDEX_JSON_LIMIT = 16 * 1024 * 1024;
/** Manifests read at once in a whole layout, however its indexes nest (each read holds a file open). */
const READ_CONCURRENCY = 16;

/** One manifest as read, with the descriptors it lists (an index's children), not yet linked to their nodes. */
interface ManifestRead {
  node: ManifestNode;
  listed: Descriptor[];
}

/** `value` as the JSON object an index or manifest is: not `null`, a number or a list, which it could be too. */
function jsonObject(value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new Error(`${what} is no JSON object.`);
  }
  return value as Record<string, unknown>;
}

/** The descriptors an index or manifest lists under `key` (none when it has none), each a JSON object. */
function descriptors(list: unknown, what: string, key: string): Descriptor[] {
  if (list === undefined) return [];
  if (!Array.isArray(list) || list.some((d) => typeof d !== 'object' || d === null || Array.isArray(d))) {
    throw new Error(`${what} has '${key}' that is no list of descriptors.`);
  }
  return list as Descriptor[];
}

/** A digest names a file under blobs/: one that is no digest (`sha256:../../x`) could name any file. */
function checkDigest(dir: string, what: string, descriptor: Descriptor): void {
  if (typeof descriptor?.digest !== 'string' || !isValidDigest(descriptor.digest)) {
    const shown = externalText(JSON.stringify(descriptor?.digest ?? null)).slice(0, 100);
    throw new Error(`the OCI layout ${dir} names a ${what} by ${shown}, which is no digest.`);
  }
}

async function readManifestFile(dir: string, descriptor: Descriptor): Promise<ManifestRead> {
  checkDigest(dir, 'manifest', descriptor);
  let bytes: Buffer;
  try {
    bytes = await readRegularFile(blobPath(dir, descriptor.digest), MANIFEST_LIMIT);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new Error(
        `the OCI layout ${dir} has an unreadable manifest ${descriptor.digest}: ${errorMessage(error)}`,
      );
    }
    throw new Error(
      `the OCI layout ${dir} lacks manifest ${descriptor.digest}${descriptor.platform ? ` (${descriptor.platform.os}/${descriptor.platform.architecture})` : ''}; copy the image with all its platforms (skopeo copy --all).`,
    );
  }
  const what = `manifest ${descriptor.digest} in ${dir}`;
  verifyDigest(what, bytes, descriptor.digest);
  const parsed = jsonObject(JSON.parse(bytes.toString('utf8')), what) as ManifestJson;
  const mediaType = descriptor.mediaType || parsed.mediaType || '';
  const node: ManifestNode = { digest: descriptor.digest, mediaType, bytes, children: [], blobs: [] };
  if (isIndexMediaType(mediaType) || (parsed.manifests && !parsed.layers)) {
    return { node, listed: descriptors(parsed.manifests, what, 'manifests') };
  }
  if (!parsed.config) throw new Error(`${what} has no config.`);
  const blobs = [parsed.config, ...descriptors(parsed.layers, what, 'layers')];
  for (const blob of blobs) checkDigest(dir, 'blob', blob);
  return { node: { ...node, blobs }, listed: [] };
}

/**
 * The manifest `root` names and all it lists, each read once however many indexes list it (or how often one
 * does), level by level: one bound on open files for the whole layout, where reading each index's children as
 * it is read let nested indexes multiply it.
 */
async function readManifestTree(dir: string, root: Descriptor): Promise<ManifestNode> {
  const reads = new Map<string, ManifestRead>();
  let level = [root];
  while (level.length > 0) {
    const fresh = [...new Map(level.map((d) => [d.digest, d])).values()].filter((d) => !reads.has(d.digest));
    const read = await mapLimit(fresh, READ_CONCURRENCY, (d) => readManifestFile(dir, d));
    read.forEach((r) => reads.set(r.node.digest, r));
    level = read.flatMap((r) => r.listed);
  }
  for (const { node, listed } of reads.values()) node.children = listed.map((d) => reads.get(d.digest)!.node);
  return reads.get(root.digest)!.node;
}

function selectDescriptor(dir: string, index: IndexJson, ref: string | undefined): Descriptor {
  const manifests = descriptors(index.manifests, `index.json of ${dir}`, 'manifests');
  if (ref !== undefined) {
    const byName = manifests.find((m) => m.annotations?.[REF_NAME_ANNOTATION] === ref);
    const byDigest = manifests.find((m) => m.digest === ref);
    const found = byName ?? byDigest;
    if (!found) {
      const names = manifests.map((m) => m.annotations?.[REF_NAME_ANNOTATION]).filter(Boolean);
      throw new Error(
        `the OCI layout ${dir} has no image '${ref}' (it has: ${names.join(', ') || 'no named images'}).`,
      );
    }
    return found;
  }
  if (manifests.length !== 1) {
    throw new Error(`the OCI layout ${dir} holds ${manifests.length} images; name one as oci:<dir>:<ref>.`);
  }
  return manifests[0]!;
}

export async function readOciLayout(dir: string, ref?: string): Promise<LocalImage> {
  let text: string;
  try {
    text = (await readRegularFile(join(dir, 'index.json'), INDEX_JSON_LIMIT)).toString('utf8');
  } catch (error) {
    throw new Error(`${dir} is not a readable OCI image layout (index.json: ${errorMessage(error)}).`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    // Not JSON.parse's words: they quote the text, and index.json may be a link to any file on the machine.
    throw new Error(`${dir} is not a readable OCI image layout (index.json is not JSON).`);
  }
  const index = jsonObject(parsed, `index.json of ${dir}`) as IndexJson;
  const root = await readManifestTree(dir, selectDescriptor(dir, index, ref));
  const manifests: ManifestNode[] = [];
  const blobs = new Map<string, Descriptor>();
  // Once per manifest: indexes that each list the next one twice would otherwise be walked 2^depth times.
  const visited = new Set<string>();
  const visit = (node: ManifestNode) => {
    if (visited.has(node.digest)) return;
    visited.add(node.digest);
    node.children.forEach(visit);
    manifests.push(node);
    for (const b of node.blobs) if (!blobs.has(b.digest)) blobs.set(b.digest, b);
  };
  visit(root);
  for (const blob of blobs.values()) {
    const info = await stat(blobPath(dir, blob.digest)).catch(() => undefined);
    if (!info) throw new Error(`the OCI layout ${dir} lacks blob ${blob.digest}.`);
    if (info.size !== blob.size) {
      throw new Error(`blob ${blob.digest} in ${dir} is ${info.size} bytes; its manifest says ${blob.size}.`);
    }
  }
  return { dir, root, manifests, blobs: [...blobs.values()] };
}
