/**
 * Phase 2's main work: a manifest already stored by digest gets its tags. Multi-tag PUTs (`?tag=`, at most
 * MAX_TAGS_PER_PUT per request) where the registry confirms them with OCI-Tag; the PUT goes to the digest, so
 * it is idempotent (phase 1 stored the manifest there already) and moves exactly the tags it names. A registry
 * that refuses the parameters (400/404/405/414/431 — the extension is not in a released spec, and registries
 * may reject unknown query parameters) or ignores them gets one PUT per tag; a 414 (URI too long: zot caps the
 * tags per request) halves the batch. A batch whose answer was lost (answerMayBeLost) is settled by one HEAD
 * per tag, at once: a tag naming the manifest counts as set; only the others get their own PUT (and one that
 * PUT is refused for, HEADs again: settleRefusedTag).
 *
 * Only a registry's answer tells whether it takes `?tag=`, and few do: distribution ignores it (zot is the one
 * implementation known). Waiting for that answer before the per-tag PUTs would cost every push to the others a
 * round trip. So while a registry's support is unknown, its multi-tag PUT goes beside one PUT per tag: the
 * tags are set in one round trip either way, and the answer decides for the manifests tagged on that registry
 * after it (more repositories, the `atomic: false` flow).
 */
import type { RegistryClient } from '../../core/oci/client.js';
import { RegistryError } from '../../core/oci/errors.js';
import { answerMayBeLost, settleRefusedTag, settleTagsByHead } from '../../core/oci/upload.js';
import { mapLimit } from '../../core/pool.js';
import { failureOf, type Failure } from './failure.js';

/** Manifest PUTs are a few KiB each: run more at once than blob uploads so tagging costs one round trip. */
export const MANIFEST_CONCURRENCY = 16;

/** The spec's floor for what a registry SHOULD accept in one multi-tag PUT. */
const MAX_TAGS_PER_PUT = 10;
/** Answers that mean "no `?tag=` here" rather than "no manifest here". */
const TAG_QUERY_REFUSED = new Set([400, 404, 405, 414, 431]);

/** What a registry (one client) showed of `?tag=` so far. */
interface MultiTagSupport {
  /** true: it confirmed tags; false: it ignored or refused them; undefined: not known yet. */
  confirmed?: boolean;
  /** Tags per request: halved by every 414. */
  batchSize: number;
}
const supportByClient = new WeakMap<RegistryClient, MultiTagSupport>();

function supportOf(client: RegistryClient): MultiTagSupport {
  let support = supportByClient.get(client);
  if (!support) supportByClient.set(client, (support = { batchSize: MAX_TAGS_PER_PUT }));
  return support;
}

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
  /** Every tag was set by multi-tag PUTs alone. */
  multiTag: boolean;
  /** Manifest PUTs spent. */
  requests: number;
}

type Put = (
  reference: string,
  tags?: readonly string[],
  tries?: 'once',
) => Promise<{ confirmedTags: string[] }>;

export async function tagManifest(
  client: RegistryClient,
  repository: string,
  manifest: StoredManifest,
  tags: readonly string[],
): Promise<TaggingResult> {
  /**
   * Tags sent in a multi-tag PUT: the probe's (beside their own PUTs) and every batch's. One whose own PUT is
   * refused may have been set by it unseen: its answer lost, or a HEAD after it that lagged.
   */
  const inBatch = new Set<string>();
  const put: Put = async (reference, batch = [], tries) => {
    const budget = client.transport.budget(tries === 'once' ? 0 : undefined);
    for (const tag of batch) inBatch.add(tag);
    try {
      return await client.putManifest(
        repository,
        reference,
        manifest.bytes,
        manifest.mediaType,
        batch,
        budget,
      );
    } catch (error) {
      // Refused (immutable tags): a multi-tag PUT may have set it.
      if (
        batch.length === 0 &&
        inBatch.has(reference) &&
        (await settleRefusedTag(client.transport, repository, reference, manifest.digest, error))
      ) {
        return { confirmedTags: [] };
      }
      // A batch whose answer was lost may have set its tags: sending them again one by one would write each
      // twice, and a registry with immutable tags would refuse those writes. The probe's tags are settled by
      // the per-tag PUTs beside it.
      if (batch.length === 0 || tries === 'once' || !answerMayBeLost(error, budget)) throw error;
      const settled = await settleTagsByHead(client.transport, repository, batch, manifest.digest, error);
      if (settled.length === 0) throw error;
      return { confirmedTags: settled };
    }
  };
  const support = supportOf(client);
  const result: TaggingResult = { tagged: [], failed: new Map(), multiTag: false, requests: 0 };
  if (tags.length === 0) return result;
  if (support.confirmed === undefined) {
    await Promise.all([probe(put, manifest, tags, support, result), onePutPerTag(put, tags, result)]);
    return result;
  }
  const rest = support.confirmed ? await inBatches(put, manifest, tags, support, result) : tags;
  await onePutPerTag(put, rest, result);
  result.multiTag = rest.length === 0 && result.failed.size === 0;
  return result;
}

/**
 * The multi-tag PUT sent beside the per-tag PUTs while support is unknown: it only learns, so it gets one try
 * (retries with backoff would hold phase 2 for seconds after the per-tag PUTs set every tag). A tag it
 * confirms counts as set even if its own PUT failed.
 */
async function probe(
  put: Put,
  manifest: StoredManifest,
  tags: readonly string[],
  support: MultiTagSupport,
  result: TaggingResult,
): Promise<void> {
  const batch = tags.slice(0, support.batchSize);
  result.requests++;
  let confirmed: string[];
  try {
    confirmed = (await put(manifest.digest, batch, 'once')).confirmedTags;
  } catch (error) {
    if (error instanceof RegistryError && TAG_QUERY_REFUSED.has(error.status ?? 0)) {
      learnRefusal(error, batch.length, support);
    }
    return; // any other failure says nothing about `?tag=`; the per-tag PUTs report their own
  }
  const set = batch.filter((t) => confirmed.includes(t));
  support.confirmed = set.length > 0;
  for (const tag of set) {
    result.failed.delete(tag);
    if (!result.tagged.includes(tag)) result.tagged.push(tag);
  }
}

/** A 414 halves the batch (down to one tag); any other refusal means "no `?tag=` here". */
function learnRefusal(error: RegistryError, sent: number, support: MultiTagSupport): void {
  if (error.status === 414 && sent > 1) support.batchSize = Math.ceil(sent / 2);
  else support.confirmed = false;
}

/** Multi-tag PUTs on a registry that confirmed them; returns the tags still to PUT one by one. */
async function inBatches(
  put: Put,
  manifest: StoredManifest,
  tags: readonly string[],
  support: MultiTagSupport,
  result: TaggingResult,
): Promise<string[]> {
  let queue = [...tags];
  const oneByOne: string[] = [];
  while (queue.length > 0 && support.confirmed) {
    const batch = queue.slice(0, support.batchSize);
    let confirmed: string[];
    try {
      result.requests++;
      confirmed = (await put(manifest.digest, batch)).confirmedTags;
    } catch (error) {
      if (!(error instanceof RegistryError) || !TAG_QUERY_REFUSED.has(error.status ?? 0)) {
        // Not about `?tag=` (and retried already): each tag of the batch gets its own PUT, as before support
        // was known, and fails only on its own answer.
        oneByOne.push(...batch);
        queue = queue.slice(batch.length);
        continue;
      }
      learnRefusal(error, batch.length, support);
      continue;
    }
    queue = queue.slice(batch.length);
    result.tagged.push(...batch.filter((t) => confirmed.includes(t)));
    oneByOne.push(...batch.filter((t) => !confirmed.includes(t)));
    // A registry that stops confirming stored this manifest by digest only: no point asking again.
    if (confirmed.length === 0) support.confirmed = false;
  }
  return [...oneByOne, ...queue];
}

async function onePutPerTag(put: Put, tags: readonly string[], result: TaggingResult): Promise<void> {
  await mapLimit(tags, MANIFEST_CONCURRENCY, async (tag) => {
    result.requests++;
    try {
      await put(tag);
      if (!result.tagged.includes(tag)) result.tagged.push(tag);
    } catch (error) {
      if (!result.tagged.includes(tag)) result.failed.set(tag, failureOf(error));
    }
  });
}
