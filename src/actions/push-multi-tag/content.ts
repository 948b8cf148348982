/**
 * Everything one release puts on a registry, flattened for the two phases: the manifests stored by digest in
 * phase 1 (the image's, then its referrers' and cosign's), the blobs they need (each with the file to send), the
 * referrers per subject (for registries without the referrers API, whose `sha256-<hex>` index phase 2 keeps),
 * and the tags phase 2 sets: the release tags on the image and cosign's `sha256-<hex>.sig|.att|.sbom`.
 */
import { blobPath, type LocalImage } from '../../core/oci/layout.js';
import { isIndexMediaType, type Descriptor } from '../../core/oci/media-types.js';
import type { StoredManifest } from './tagging.js';

export interface PushManifest extends StoredManifest {
  isIndex: boolean;
}

export interface PushBlob {
  digest: string;
  size: number;
  path: string;
}

/** A manifest whose `subject` is one of ours, as the referrers API and its tag schema list it. */
export interface Referrer {
  subject: string;
  descriptor: Descriptor;
}

/** A tag that is not a release tag: cosign's `sha256-<hex>.sig` and friends. */
export interface ArtifactTag {
  tag: string;
  manifest: PushManifest;
}

/** What was found attached to the image (at the source registry or in the layout). */
export interface Attachments {
  manifests: PushManifest[];
  blobs: PushBlob[];
  referrers: Referrer[];
  artifactTags: ArtifactTag[];
}

export interface PushContent {
  root: PushManifest;
  /** Stored by digest in phase 1, children before the indexes that list them. */
  manifests: PushManifest[];
  blobs: PushBlob[];
  referrers: Referrer[];
  artifactTags: ArtifactTag[];
}

export const NO_ATTACHMENTS: Attachments = { manifests: [], blobs: [], referrers: [], artifactTags: [] };

export function pushContent(image: LocalImage, attached: Attachments = NO_ATTACHMENTS): PushContent {
  const asPush = (m: LocalImage['root']): PushManifest => ({
    digest: m.digest,
    mediaType: m.mediaType,
    bytes: m.bytes,
    isIndex: isIndexMediaType(m.mediaType),
  });
  const manifests = new Map<string, PushManifest>();
  for (const m of [...image.manifests.map(asPush), ...attached.manifests]) manifests.set(m.digest, m);
  const blobs = new Map<string, PushBlob>();
  for (const b of image.blobs) {
    blobs.set(b.digest, { digest: b.digest, size: b.size, path: blobPath(image.dir, b.digest) });
  }
  for (const b of attached.blobs) if (!blobs.has(b.digest)) blobs.set(b.digest, b);
  return {
    root: asPush(image.root),
    manifests: [...manifests.values()],
    blobs: [...blobs.values()],
    referrers: attached.referrers,
    artifactTags: attached.artifactTags,
  };
}

/** The referrers tag schema: `<algorithm>-<encoded>`, truncated to 32 and 64 characters, others as `-`. */
export function referrersTag(digest: string): string {
  const colon = digest.indexOf(':');
  const clean = (s: string) => s.replace(/[^A-Za-z0-9_.-]/g, '-');
  return `${clean(digest.slice(0, colon).slice(0, 32))}-${clean(digest.slice(colon + 1).slice(0, 64))}`;
}

/** cosign's tags for a subject: signatures, attestations, SBOMs. */
export const COSIGN_SUFFIXES = ['sig', 'att', 'sbom'] as const;
