/**
 * Pushes one local image to one repository: blobs first (HEAD, then mount or upload, in parallel), then child
 * manifests by digest, then the top manifest under every tag — with a single multi-tag PUT when the registry
 * confirms it, else one PUT per tag (manifest bytes only, no blob traffic).
 */
import type { RegistryClient } from './client.js';
import { blobPath, type LocalImage } from './layout.js';
import { mapLimit } from './pool.js';

export type BlobAction = 'uploaded' | 'mounted' | 'skipped';

export interface RepositoryPushOptions {
  tags: readonly string[];
  concurrency: number;
  chunkSize: number;
  /** A repository on the same registry that already holds this image's blobs: mount from it. */
  mountFrom?: string;
  onBlob?: (digest: string, size: number, action: BlobAction) => void;
}

export interface RepositoryPushResult {
  repository: string;
  digest: string;
  tags: string[];
  uploaded: number;
  mounted: number;
  skipped: number;
  bytesUploaded: number;
  /** The registry confirmed a multi-tag PUT. */
  multiTag: boolean;
}

/** Manifest PUTs are a few KiB each: run more at once than blob uploads so tagging costs one round trip. */
const MANIFEST_CONCURRENCY = 16;

/** Per client: false once a registry showed it ignores `?tag=`, so later repositories tag one by one at once. */
const multiTagSupport = new WeakMap<RegistryClient, boolean>();

export async function pushToRepository(
  client: RegistryClient,
  repository: string,
  image: LocalImage,
  options: RepositoryPushOptions,
): Promise<RepositoryPushResult> {
  const result: RepositoryPushResult = {
    repository,
    digest: image.root.digest,
    tags: [...options.tags],
    uploaded: 0,
    mounted: 0,
    skipped: 0,
    bytesUploaded: 0,
    multiTag: false,
  };
  await mapLimit(image.blobs, options.concurrency, async (blob) => {
    let action: BlobAction;
    if (await client.headBlob(repository, blob.digest)) {
      action = 'skipped';
    } else {
      const mount =
        options.mountFrom && options.mountFrom !== repository
          ? await client.mountBlob(repository, blob.digest, options.mountFrom)
          : undefined;
      if (mount?.mounted) {
        action = 'mounted';
      } else {
        await client.uploadBlob(
          repository,
          { digest: blob.digest, size: blob.size, path: blobPath(image.dir, blob.digest) },
          { chunkSize: options.chunkSize, location: mount?.location },
        );
        action = 'uploaded';
        result.bytesUploaded += blob.size;
      }
    }
    result[action]++;
    options.onBlob?.(blob.digest, blob.size, action);
  });

  const children = image.manifests.filter((m) => m !== image.root);
  await mapLimit(children, MANIFEST_CONCURRENCY, (m) =>
    client.putManifest(repository, m.digest, m.bytes, m.mediaType),
  );

  const root = image.root;
  let remaining = [...options.tags];
  if (remaining.length === 0 || multiTagSupport.get(client) !== false) {
    const put = await client.putManifest(repository, root.digest, root.bytes, root.mediaType, remaining);
    if (remaining.length > 0) {
      result.multiTag = put.confirmedTags.length === remaining.length;
      multiTagSupport.set(client, result.multiTag);
      remaining = remaining.filter((t) => !put.confirmedTags.includes(t));
    }
  }
  await mapLimit(remaining, MANIFEST_CONCURRENCY, (tag) =>
    client.putManifest(repository, tag, root.bytes, root.mediaType),
  );
  return result;
}
