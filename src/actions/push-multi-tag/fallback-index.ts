/**
 * The referrers tag schema at a destination without the referrers API, as the distribution-spec's "Pushing
 * Manifests with Subject" asks of a client: pull the `sha256-<hex>` index (a 404 starts an empty one; anything
 * but an image index is reported and left alone), add the descriptors it lacks (never a duplicate), push it
 * back under the same tag.
 *
 * Another client may update the same tag meanwhile, and registries without the referrers API (distribution,
 * GHCR, Docker Hub) have no conditional PUT. So the index is read back after the PUT: a descriptor lost to a
 * concurrent writer (theirs replaced ours) is merged again into what is there now, a few times, and a loss we
 * cannot repair is reported. Descriptors the other writer added are always kept: we only ever add. What other
 * tools wrote is kept as they wrote it, entries we would not write ourselves and fields of the index included.
 */
import type { RegistryClient } from '../../core/oci/client.js';
import { MediaType, type Descriptor } from '../../core/oci/media-types.js';
import { overtakenAfterLostAnswer } from '../../core/oci/upload.js';

/** Read-merge-write rounds before a concurrent writer wins. */
const MAX_ROUNDS = 3;

export interface FallbackState {
  /** Digest of the index under the tag now, if any. */
  digest?: string;
  /** Its entries exactly as they are, foreign ones included (one without a media type too). */
  descriptors: Descriptor[];
  /** Its other fields (annotations another tool set), written back as they are. */
  fields?: Record<string, unknown>;
  /** The tag holds something else (`digest` is that): left alone, and reported as failed by phase 2. */
  notIndex?: boolean;
}

/** The referrers tag holds something other than an image index. */
export class NotAnIndexError extends Error {
  constructor(
    message: string,
    readonly digest: string,
  ) {
    super(message);
    this.name = 'NotAnIndexError';
  }
}

/** The index under a referrers tag; throws when the tag holds something else (the spec's "report a failure"). */
export async function readFallbackIndex(
  client: RegistryClient,
  repository: string,
  tag: string,
): Promise<FallbackState> {
  const found = await client.findManifest(repository, tag);
  if (!found) return { descriptors: [] };
  const notIndex = (what: string) =>
    new NotAnIndexError(
      `${repository}:${tag} holds ${what}, not the image index of the referrers tag schema; left as it is.`,
      found.digest,
    );
  if (found.mediaType !== MediaType.ociIndex)
    throw notIndex(`a ${found.mediaType || 'manifest of unknown type'}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(found.bytes.toString('utf8'));
  } catch {
    throw notIndex('something that is not JSON');
  }
  const {
    manifests,
    schemaVersion: _v,
    mediaType: _m,
    ...fields
  } = (parsed ?? {}) as Record<string, unknown>;
  if (!Array.isArray(manifests)) throw notIndex('a document without a manifests list');
  return { digest: found.digest, descriptors: manifests as Descriptor[], fields };
}

export function missingFrom(state: FallbackState, wanted: readonly Descriptor[]): Descriptor[] {
  const have = new Set(state.descriptors.map((d) => (d as Partial<Descriptor> | null)?.digest));
  return wanted.filter((d) => !have.has(d.digest));
}

export function fallbackIndexBytes(
  descriptors: readonly Descriptor[],
  fields: Record<string, unknown> = {},
): Buffer {
  return Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociIndex, ...fields, manifests: descriptors }),
  );
}

/** Makes the index under `tag` list every descriptor in `wanted`; returns its digest before and after. */
export async function updateFallbackIndex(
  client: RegistryClient,
  repository: string,
  tag: string,
  wanted: readonly Descriptor[],
): Promise<{ before?: string; after: string; added: number }> {
  let state = await readFallbackIndex(client, repository, tag);
  const before = state.digest;
  let added = 0;
  for (let round = 1; ; round++) {
    const missing = missingFrom(state, wanted);
    if (missing.length === 0) return { before, after: state.digest!, added };
    if (round > MAX_ROUNDS) {
      throw new Error(
        `${repository}:${tag} kept changing under concurrent updates; ${missing.length} referrer(s) not listed.`,
      );
    }
    const bytes = fallbackIndexBytes([...state.descriptors, ...missing], state.fields);
    try {
      await client.putManifest(repository, tag, bytes, MediaType.ociIndex);
    } catch (error) {
      // Its answer lost, and another writer's index under the tag by the time of the HEAD: the read-back
      // below merges ours into theirs, as after any concurrent write.
      if (!overtakenAfterLostAnswer(error)) throw error;
    }
    added += round === 1 ? missing.length : 0;
    state = await readFallbackIndex(client, repository, tag);
  }
}
