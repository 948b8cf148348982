/**
 * Phase 2's main work: a manifest already stored by digest gets its tags. Multi-tag PUTs (`?tag=`, at most
 * MAX_TAGS_PER_PUT per request) where the registry confirms them with OCI-Tag; the PUT goes to the digest, so
 * it is idempotent (phase 1 stored the manifest there already) and moves exactly the tags it names. A registry
 * that refuses the parameters (400/404/405/414/431 — the extension is not in a released spec, and registries
 * may reject unknown query parameters) or ignores them gets one PUT per tag; a 414 (URI too long: zot caps the
 * tags per request) halves the batch first.
 */
import type { RegistryClient } from '../../core/oci/client.js';
import { RegistryError } from '../../core/oci/errors.js';
import { mapLimit } from '../../core/oci/pool.js';
import { failureOf, type Failure } from './failure.js';

/** Manifest PUTs are a few KiB each: run more at once than blob uploads so tagging costs one round trip. */
export const MANIFEST_CONCURRENCY = 16;

/** The spec's floor for what a registry SHOULD accept in one multi-tag PUT. */
const MAX_TAGS_PER_PUT = 10;
/** Answers that mean "no `?tag=` here" rather than "no manifest here". */
const TAG_QUERY_REFUSED = new Set([400, 404, 405, 414, 431]);

/** Per client: false once a registry showed it ignores or refuses `?tag=`, so later repositories skip it. */
const multiTagSupport = new WeakMap<RegistryClient, boolean>();

export interface StoredManifest {
  digest: string;
  mediaType: string;
  bytes: Buffer;
}

export interface TaggingResult {
  /** Tags that point at the manifest now. */
  tagged: string[];
  /** Tags that could not be set (after the transport's retries), with the reason. */
  failed: Map<string, Failure>;
  /** Every tag was confirmed by multi-tag PUTs. */
  multiTag: boolean;
  /** Manifest PUTs spent. */
  requests: number;
}

export async function tagManifest(
  client: RegistryClient,
  repository: string,
  manifest: StoredManifest,
  tags: readonly string[],
): Promise<TaggingResult> {
  const put = (reference: string, batch: readonly string[] = []) =>
    client.putManifest(repository, reference, manifest.bytes, manifest.mediaType, batch);
  const result: TaggingResult = { tagged: [], failed: new Map(), multiTag: false, requests: 0 };
  let queue = [...tags];
  const oneByOne: string[] = [];
  let batchSize = MAX_TAGS_PER_PUT;
  while (queue.length > 0 && multiTagSupport.get(client) !== false) {
    const batch = queue.slice(0, batchSize);
    let confirmed: string[];
    try {
      result.requests++;
      confirmed = (await put(manifest.digest, batch)).confirmedTags;
    } catch (error) {
      if (!(error instanceof RegistryError) || !TAG_QUERY_REFUSED.has(error.status ?? 0)) {
        // Not about `?tag=`: the tags of this batch failed; the rest still get their own chance.
        for (const tag of batch) result.failed.set(tag, failureOf(error));
        queue = queue.slice(batch.length);
        continue;
      }
      if (error.status === 414 && batch.length > 1) {
        batchSize = Math.ceil(batch.length / 2);
        continue;
      }
      multiTagSupport.set(client, false);
      break;
    }
    queue = queue.slice(batch.length);
    result.tagged.push(...batch.filter((t) => confirmed.includes(t)));
    oneByOne.push(...batch.filter((t) => !confirmed.includes(t)));
    // A registry that ignores the parameters stored the manifest by digest only: no point asking again.
    multiTagSupport.set(client, confirmed.length > 0);
  }
  oneByOne.push(...queue);
  await mapLimit(oneByOne, MANIFEST_CONCURRENCY, async (tag) => {
    result.requests++;
    try {
      await put(tag);
      result.tagged.push(tag);
    } catch (error) {
      result.failed.set(tag, failureOf(error));
    }
  });
  result.multiTag = tags.length > 0 && oneByOne.length === 0 && result.failed.size === 0;
  return result;
}
