/**
 * The two phases of a release push, for one repository each:
 *
 * - lookups (part of phase 1, HEADs and GETs only; all a dry run does): what the repository has, where each tag
 *   points now, whether the registry has the referrers API and what its `sha256-<hex>` indexes list;
 * - phase 1: every missing blob (mounted from a sibling repository where one is named, else uploaded) and
 *   every missing manifest stored BY DIGEST: nothing a client pulls by tag changes;
 * - phase 2: the tags (release tags on the image, cosign's tags, the referrers indexes). Each ref succeeds or
 *   fails on its own; the transport has retried it already.
 */
import type { RegistryClient } from '../../core/oci/client.js';
import { mapLimit } from '../../core/pool.js';
import { referrersTag, type PushContent } from './content.js';
import { gathersEntries } from './cosign-merge.js';
import { mergeAt, putGathering } from './cosign-write.js';
import { failureOf, type Failure } from './failure.js';
import {
  NotAnIndexError,
  readFallbackIndex,
  updateFallbackIndex,
  type FallbackState,
} from './fallback-index.js';
import type { Inspection, Merge, RepositoryPlan } from './plan.js';
import { MANIFEST_CONCURRENCY, tagManifest } from './tagging.js';

export interface Target {
  registry: string;
  repository: string;
  client: RegistryClient;
  mountFrom?: string;
  /** Where the lookups keep what they read from this repository (cosign configs to merge into). */
  scratch: string;
}

export async function inspect(
  target: Target,
  content: PushContent,
  tags: readonly string[],
): Promise<Inspection> {
  const { client, repository } = target;
  const blobs = new Set<string>();
  const manifests = new Set<string>();
  const tagged = new Map<string, string>();
  const fallback = new Map<string, FallbackState>();
  const merges = new Map<string, Merge>();
  let referrersApi: boolean | undefined;
  const subjects = [...new Set(content.referrers.map((r) => r.subject))];
  const lookups: Array<() => Promise<void>> = [
    ...content.blobs.map((b) => async () => {
      if (await client.headBlob(repository, b.digest)) blobs.add(b.digest);
    }),
    ...content.manifests.map((m) => async () => {
      if (await client.headManifest(repository, m.digest)) manifests.add(m.digest);
    }),
    ...tags.map((tag) => async () => {
      const found = await client.headManifest(repository, tag);
      if (found) tagged.set(tag, found.digest);
    }),
    ...content.artifactTags.map((artifact) => async () => {
      if (!gathersEntries(artifact.tag)) {
        const found = await client.headManifest(repository, artifact.tag);
        if (found) tagged.set(artifact.tag, found.digest);
        return;
      }
      // Read, not just looked at: signatures there that the source lacks are kept (cosign-merge.ts).
      const found = await client.findManifest(repository, artifact.tag);
      if (!found) return;
      tagged.set(artifact.tag, found.digest);
      if (found.digest === artifact.manifest.digest) return;
      // One tag whose entries cannot be read is that ref's failure (phase 2 tries again), not the registry's.
      const merge = await mergeAt(target, found, artifact.manifest).catch((error: unknown): Merge => ({
        kind: 'unread',
        reason: failureOf(error).reason,
      }));
      if (merge) merges.set(artifact.tag, merge);
    }),
  ];
  if (subjects.length > 0) {
    // Probed beside the other lookups, and the indexes read at once, so referrers add no round trip here.
    lookups.push(async () => {
      referrersApi = (await client.getReferrers(repository, subjects[0]!)) !== undefined;
    });
    for (const subject of subjects) {
      lookups.push(async () => {
        // A tag that holds something else is phase 2's failure to report, for that ref only; the plan says so.
        const now = await readFallbackIndex(client, repository, referrersTag(subject)).catch((error) =>
          error instanceof NotAnIndexError
            ? { digest: error.digest, descriptors: [], notIndex: true }
            : undefined,
        );
        if (now) fallback.set(subject, now);
      });
    }
  }
  await mapLimit(lookups, MANIFEST_CONCURRENCY, (lookup) => lookup());
  return { blobs, manifests, tags: tagged, referrersApi, fallback, merges };
}

/** Blobs up to this size go in the small-blob lane of phase 1. */
const SMALL_BLOB = 256 * 1024;

export interface StoreOptions {
  concurrency: number;
  chunkSize: number;
}

export interface StoreResult {
  uploaded: number;
  mounted: number;
  skipped: number;
  bytesUploaded: number;
  /** A manifest with a subject came back without OCI-Subject: the registry did not index it. */
  subjectIgnored: boolean;
  /**
   * A mount was refused for want of rights on the source (401/403): that holds for all its blobs, so the rest
   * were uploaded without asking.
   */
  mountRefused: boolean;
}

/** Phase 1 for one repository: blobs, then manifests by digest (children before the indexes listing them). */
export async function storeByDigest(
  target: Target,
  content: PushContent,
  plan: RepositoryPlan,
  options: StoreOptions,
): Promise<StoreResult> {
  const { client, repository } = target;
  const result: StoreResult = {
    uploaded: 0,
    mounted: 0,
    skipped: 0,
    bytesUploaded: 0,
    subjectIgnored: false,
    mountRefused: false,
  };
  const files = new Map(content.blobs.map((b) => [b.digest, b]));
  const store = async (blob: RepositoryPlan['blobs'][number]) => {
    if (blob.action === 'skip') {
      result.skipped++;
      return;
    }
    // Mount then upload is one operation with one retry budget.
    const budget = client.transport.budget();
    const mount =
      blob.action === 'mount' && plan.mountFrom && !result.mountRefused
        ? await client.mountBlob(repository, blob.digest, plan.mountFrom, budget)
        : undefined;
    if (mount?.mounted) {
      result.mounted++;
      return;
    }
    if (mount?.refused) result.mountRefused = true;
    await client.uploadBlob(repository, files.get(blob.digest)!, {
      chunkSize: options.chunkSize,
      location: mount?.location,
      budget,
    });
    result.uploaded++;
    result.bytesUploaded += blob.size;
  };
  // Small blobs (configs, signatures, SBOMs) in a lane of their own, so they never wait behind large layers
  // for one of `concurrency` slots: they cost round trips, not bandwidth.
  const small = plan.blobs.filter((b) => b.size <= SMALL_BLOB);
  const large = plan.blobs.filter((b) => b.size > SMALL_BLOB);
  // Both lanes settle before a failure is reported: nothing may still be sending when the client closes.
  const lanes = await Promise.allSettled([
    mapLimit(large, options.concurrency, store),
    mapLimit(small, MANIFEST_CONCURRENCY, store),
  ]);
  for (const lane of lanes) if (lane.status === 'rejected') throw lane.reason;
  // Merged cosign manifests: their new config, then (below) the manifest, both by digest like the rest.
  const merged = [...plan.merges.values()].flatMap((m) => (m.kind === 'merged' ? [m] : []));
  await mapLimit(merged, MANIFEST_CONCURRENCY, async (m) => {
    await client.uploadBlob(repository, m.config);
    result.uploaded++;
    result.bytesUploaded += m.config.size;
  });

  const referrers = new Set(content.referrers.map((r) => r.descriptor.digest));
  const toStore = new Set(plan.manifests.filter((m) => m.store).map((m) => m.digest));
  const manifests = content.manifests.filter((m) => toStore.has(m.digest));
  const put = async (m: (typeof manifests)[number]) => {
    const stored = await client.putManifest(repository, m.digest, m.bytes, m.mediaType);
    if (referrers.has(m.digest) && !stored.subject) result.subjectIgnored = true;
  };
  // Image manifests in one parallel wave; indexes after, in order, once everything they list is there.
  await mapLimit(
    manifests.filter((m) => !m.isIndex),
    MANIFEST_CONCURRENCY,
    put,
  );
  for (const index of manifests.filter((m) => m.isIndex)) await put(index);
  await mapLimit(merged, MANIFEST_CONCURRENCY, (m) => put(m.manifest));
  return result;
}

export interface RefOutcome {
  /** `host/repo:tag` */
  ref: string;
  tag: string;
  before?: string;
  after: string;
  /** A release tag (as opposed to a cosign tag or a referrers index). */
  release: boolean;
  /** Why the ref was not set. */
  failure?: Failure;
}

export interface TagResult {
  outcomes: RefOutcome[];
  multiTag: boolean;
  tagRequests: number;
}

/** Phase 2 for one repository: every tag, each ref reported on its own. */
export async function moveTags(
  target: Target,
  content: PushContent,
  plan: RepositoryPlan,
  options: { maintainFallback: boolean },
): Promise<TagResult> {
  const { client, repository } = target;
  const refOf = (tag: string) => `${target.registry}/${repository}:${tag}`;
  const release = new Set(plan.releaseTags);
  const outcomes: RefOutcome[] = [];
  // A tag that points at the right manifest already needs no request.
  const moving = plan.tags.filter((m) => m.before !== m.after);
  const releaseMoves = moving.filter((m) => release.has(m.tag)).map((m) => m.tag);
  const artifactMoves = moving.filter((m) => !release.has(m.tag));
  const fallbackWork = options.maintainFallback ? plan.fallback : [];
  const [tagging] = await Promise.all([
    tagManifest(client, repository, content.root, releaseMoves),
    mapLimit(artifactMoves, MANIFEST_CONCURRENCY, async (move) => {
      const merge = plan.merges.get(move.tag);
      const source = content.artifactTags.find((a) => a.tag === move.tag)!.manifest;
      const manifest = merge?.kind === 'merged' ? merge.manifest : source;
      let after = move.after;
      try {
        if (gathersEntries(move.tag)) {
          // Unread at the lookups: no base, so the tag is read again and merged into before anything is written.
          const base = merge?.kind === 'unread' ? undefined : move.before;
          after = await putGathering(target, move.tag, source, manifest, base);
        } else await client.putManifest(repository, move.tag, manifest.bytes, manifest.mediaType);
      } catch (error) {
        outcomes.push({ ref: refOf(move.tag), ...move, release: false, failure: failureOf(error) });
        return;
      }
      outcomes.push({ ref: refOf(move.tag), ...move, after, release: false });
    }),
    mapLimit(fallbackWork, MANIFEST_CONCURRENCY, async (f) => {
      try {
        const done = await updateFallbackIndex(client, repository, f.tag, f.wanted);
        outcomes.push({
          ref: refOf(f.tag),
          tag: f.tag,
          before: done.before,
          after: done.after,
          release: false,
        });
      } catch (error) {
        outcomes.push({
          ref: refOf(f.tag),
          tag: f.tag,
          before: f.before,
          after: '',
          release: false,
          failure: failureOf(error),
        });
      }
    }),
  ]);
  for (const move of plan.tags) {
    if (!release.has(move.tag) && move.before !== move.after) continue;
    const failure = tagging.failed.get(move.tag);
    outcomes.push({
      ref: refOf(move.tag),
      ...move,
      release: release.has(move.tag),
      ...(failure ? { failure } : {}),
    });
  }
  return { outcomes, multiTag: tagging.multiTag, tagRequests: tagging.requests };
}
