/**
 * Pushes one local image to one repository: blobs first (HEAD, then mount or upload, in parallel), then child
 * manifests by digest, then the top manifest under every tag — with multi-tag PUTs where the registry
 * confirms them, else one PUT per tag (manifest bytes only, no blob traffic).
 */
import type { RegistryClient } from './client.js';
import { RegistryError } from './errors.js';
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
  /** Every tag was confirmed by multi-tag PUTs. */
  multiTag: boolean;
  /** Manifest PUTs spent on the top manifest and its tags. */
  tagRequests: number;
}

/** Manifest PUTs are a few KiB each: run more at once than blob uploads so tagging costs one round trip. */
const MANIFEST_CONCURRENCY = 16;

/** The spec's floor for what a registry SHOULD accept in one multi-tag PUT. */
const MAX_TAGS_PER_PUT = 10;
/** Answers that mean "no `?tag=` here" rather than "no manifest here". */
const TAG_QUERY_REFUSED = new Set([400, 404, 405, 414, 431]);

/** Per client: false once a registry showed it ignores or refuses `?tag=`, so later repositories skip it. */
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
    tagRequests: 0,
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

  const tagging = await tagRoot(client, repository, image.root, options.tags);
  result.multiTag = tagging.multiTag;
  result.tagRequests = tagging.requests;
  return result;
}

/**
 * Stores the top manifest under every tag. Multi-tag PUTs (`?tag=`, at most MAX_TAGS_PER_PUT per request) where
 * the registry confirms them; a registry that refuses the parameters (400/404/405/414/431 — the extension is
 * not in a released spec, and registries may reject unknown query parameters) gets the manifest PUT without
 * them and then one PUT per tag, and a 414 (URI too long: zot caps the tags per request) halves the batch.
 * Tags a registry did not confirm are PUT one by one.
 */
async function tagRoot(
  client: RegistryClient,
  repository: string,
  root: LocalImage['root'],
  tags: readonly string[],
): Promise<{ multiTag: boolean; requests: number }> {
  const put = (reference: string, batch: readonly string[] = []) =>
    client.putManifest(repository, reference, root.bytes, root.mediaType, batch);
  let queue = [...tags];
  const oneByOne: string[] = [];
  let requests = 0;
  let batchSize = MAX_TAGS_PER_PUT;
  let stored = false;
  while (queue.length > 0 && multiTagSupport.get(client) !== false) {
    const batch = queue.slice(0, batchSize);
    let confirmed: string[];
    try {
      requests++;
      confirmed = (await put(root.digest, batch)).confirmedTags;
    } catch (error) {
      if (!(error instanceof RegistryError) || !TAG_QUERY_REFUSED.has(error.status ?? 0)) throw error;
      if (error.status === 414 && batch.length > 1) {
        batchSize = Math.ceil(batch.length / 2);
        continue;
      }
      multiTagSupport.set(client, false);
      break;
    }
    stored = true;
    queue = queue.slice(batch.length);
    oneByOne.push(...batch.filter((t) => !confirmed.includes(t)));
    // A registry that ignores the parameters stored the manifest by digest only: no point asking again.
    multiTagSupport.set(client, confirmed.length > 0);
  }
  oneByOne.push(...queue);
  if (!stored && (tags.length === 0 || requests > 0)) {
    requests++;
    await put(root.digest);
  }
  await mapLimit(oneByOne, MANIFEST_CONCURRENCY, (tag) => put(tag));
  return { multiTag: tags.length > 0 && oneByOne.length === 0, requests: requests + oneByOne.length };
}
