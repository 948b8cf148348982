/** Manifest media types a client can push and pull, and which of them are indexes (lists of manifests). */
export const MediaType = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
} as const;

/** containers/image's limit: a larger "manifest" is an attack or a mistake, not something to buffer. */
export const MANIFEST_LIMIT = 4 * 1024 * 1024;

export const MANIFEST_MEDIA_TYPES: readonly string[] = [
  MediaType.ociIndex,
  MediaType.ociManifest,
  MediaType.dockerList,
  MediaType.dockerManifest,
];

export function isIndexMediaType(mediaType: string): boolean {
  return mediaType === MediaType.ociIndex || mediaType === MediaType.dockerList;
}

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  /** The artifact a referrer holds (OCI 1.1), as the referrers API and its tag schema list it. */
  artifactType?: string;
  annotations?: Record<string, string>;
  platform?: { architecture: string; os: string; variant?: string };
}
