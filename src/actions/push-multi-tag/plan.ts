/**
 * What a push will do to one repository, decided from what the registry already has (phase 1's lookups: HEADs,
 * plus the referrers probe and the `sha256-<hex>` indexes it reads): which blobs to upload, mount or skip,
 * which manifests to store by digest, which tags move and from where. Pure: the dry run prints it, the real run
 * executes it, and both report from it.
 */
import type { Descriptor } from '../../core/oci/media-types.js';
import { formatBytes } from '../../core/summary.js';
import { referrersTag, type PushBlob, type PushContent, type PushManifest } from './content.js';
import { missingFrom, type FallbackState } from './fallback-index.js';

export type BlobAction = 'upload' | 'mount' | 'skip';

/** What the registry answered to phase 1's lookups for one repository. */
export interface Inspection {
  /** Blob digests the repository has. */
  blobs: ReadonlySet<string>;
  /** Manifest digests the repository has. */
  manifests: ReadonlySet<string>;
  /** Digest each tag points at now (release tags and cosign tags); absent: no such tag. */
  tags: ReadonlyMap<string, string>;
  /** Whether the referrers API answered (asked only when there are referrers to push). */
  referrersApi?: boolean;
  /** The `sha256-<hex>` indexes now, per subject (read only where the referrers API is missing). */
  fallback: ReadonlyMap<string, FallbackState>;
  /** cosign `.sig`/`.att` tags that hold entries of their own: what the tag gets instead of the source's. */
  merges: ReadonlyMap<string, Merge>;
}

/** A cosign tag at the destination merged with the source's (cosign-merge.ts). */
export type Merge =
  /** It holds every entry of the source's already: the tag stays. */
  | { kind: 'present' }
  /** A new manifest and config, stored by digest in phase 1, tagged in phase 2. */
  | { kind: 'merged'; manifest: PushManifest; config: PushBlob }
  /**
   * Its entries could not be read (its config missing, not matching its digest, not answered): phase 2 reads
   * the tag again and reports that ref alone if it still cannot merge, never writing over entries it did not see.
   */
  | { kind: 'unread'; reason: string };

export interface TagMove {
  tag: string;
  before?: string;
  after: string;
}

export interface FallbackUpdate {
  subject: string;
  tag: string;
  before?: string;
  /** Every referrer of the subject: the index must list them all. */
  wanted: Descriptor[];
  /** Those it lacks now. */
  add: number;
  /** The tag holds no image index: phase 2 leaves it and reports the ref as failed. */
  notIndex?: boolean;
}

export interface RepositoryPlan {
  registry: string;
  repository: string;
  blobs: Array<{ digest: string; size: number; action: BlobAction }>;
  /** Where missing blobs are mounted from (a repository on the same registry). */
  mountFrom?: string;
  manifests: Array<{ digest: string; store: boolean }>;
  /** Release tags on the image, then cosign's tags. */
  tags: TagMove[];
  /** Tags on the image: a subset of `tags`. */
  releaseTags: string[];
  /** Whether the registry answered the referrers API (undefined: not asked, nothing refers to the image). */
  referrersApi?: boolean;
  /**
   * The `sha256-<hex>` index per subject with referrers. Phase 2 maintains them where the referrers API is
   * missing, or where a registry stored a referrer without acknowledging its subject.
   */
  fallback: FallbackUpdate[];
  merges: ReadonlyMap<string, Merge>;
}

export function planRepository(
  target: { registry: string; repository: string; mountFrom?: string },
  content: PushContent,
  tags: readonly string[],
  seen: Inspection,
): RepositoryPlan {
  const blobs = content.blobs.map((b) => ({
    digest: b.digest,
    size: b.size,
    action: (seen.blobs.has(b.digest) ? 'skip' : target.mountFrom ? 'mount' : 'upload') as BlobAction,
  }));
  const moves: TagMove[] = [
    ...tags.map((tag) => ({ tag, before: seen.tags.get(tag), after: content.root.digest })),
    ...content.artifactTags.map((a) => {
      const before = seen.tags.get(a.tag);
      const merge = seen.merges.get(a.tag);
      const after =
        merge?.kind === 'merged'
          ? merge.manifest.digest
          : merge?.kind === 'present'
            ? before!
            : a.manifest.digest;
      return { tag: a.tag, before, after };
    }),
  ];
  const fallback = [...new Set(content.referrers.map((r) => r.subject))].map((subject) => {
    const wanted = content.referrers.filter((r) => r.subject === subject).map((r) => r.descriptor);
    const now = seen.fallback.get(subject) ?? { descriptors: [] };
    return {
      subject,
      tag: referrersTag(subject),
      before: now.digest,
      wanted,
      add: missingFrom(now, wanted).length,
      ...(now.notIndex ? { notIndex: true } : {}),
    };
  });
  return {
    registry: target.registry,
    repository: target.repository,
    blobs,
    mountFrom: target.mountFrom,
    manifests: content.manifests.map((m) => ({ digest: m.digest, store: !seen.manifests.has(m.digest) })),
    tags: moves,
    releaseTags: [...tags],
    referrersApi: seen.referrersApi,
    fallback,
    merges: seen.merges,
  };
}

/** `sha256:0123456789ab…`: enough to tell digests apart in a log line or a table. */
export function shortDigest(digest: string | undefined): string {
  if (!digest) return '(none)';
  const colon = digest.indexOf(':');
  return `${digest.slice(0, colon + 13)}…`;
}

export function moveText(move: TagMove): string {
  if (move.before === move.after) return `${move.tag}: ${shortDigest(move.after)} (unchanged)`;
  return `${move.tag}: ${move.before ? shortDigest(move.before) : '(new)'} → ${shortDigest(move.after)}`;
}

export function blobCounts(plan: RepositoryPlan): Record<BlobAction, { count: number; bytes: number }> {
  const counts = {
    upload: { count: 0, bytes: 0 },
    mount: { count: 0, bytes: 0 },
    skip: { count: 0, bytes: 0 },
  };
  for (const b of plan.blobs) {
    counts[b.action].count++;
    counts[b.action].bytes += b.size;
  }
  return counts;
}

function mergeNote(merge: Merge | undefined): string {
  if (merge?.kind === 'merged') return " (merged: the destination's entries kept)";
  if (merge?.kind === 'unread') return ` (the destination's entries could not be read: ${merge.reason})`;
  return '';
}

/** The plan as log lines, for the dry run and for the log of a real run. */
export function planLines(plan: RepositoryPlan): string[] {
  const c = blobCounts(plan);
  const stored = plan.manifests.filter((m) => m.store).length;
  const lines = [
    `${plan.registry}/${plan.repository}:`,
    `  blobs: ${c.upload.count} to upload (${formatBytes(c.upload.bytes)}), ` +
      `${c.mount.count} to mount${plan.mountFrom ? ` from ${plan.mountFrom}` : ''} (${formatBytes(c.mount.bytes)}), ` +
      `${c.skip.count} already there (${formatBytes(c.skip.bytes)})`,
    `  manifests by digest: ${stored} to store, ${plan.manifests.length - stored} already there`,
    ...plan.tags.map((m) => `  tag ${moveText(m)}` + mergeNote(plan.merges.get(m.tag))),
    ...(plan.referrersApi ? [`  referrers: the registry indexes them itself (referrers API)`] : []),
    ...(plan.referrersApi === false ? plan.fallback : []).map((f) =>
      f.notIndex
        ? `  referrers index ${f.tag}: holds no image index (now ${shortDigest(f.before)}); left as it is, ` +
          'reported as failed'
        : `  referrers index ${f.tag}: ${f.add} of ${f.wanted.length} referrer(s) to add` +
          (f.before ? ` (now ${shortDigest(f.before)})` : ' (new)'),
    ),
  ];
  return lines;
}

/** The plan as the `plan` output: compact JSON a later step can read. */
export function planJson(plans: readonly RepositoryPlan[]): unknown {
  return plans.map((p) => {
    const c = blobCounts(p);
    return {
      repository: `${p.registry}/${p.repository}`,
      blobs: {
        upload: c.upload.count,
        uploadBytes: c.upload.bytes,
        mount: c.mount.count,
        mountBytes: c.mount.bytes,
        skip: c.skip.count,
        skipBytes: c.skip.bytes,
      },
      manifests: {
        store: p.manifests.filter((m) => m.store).length,
        present: p.manifests.filter((m) => !m.store).length,
      },
      tags: p.tags.map((t) => ({ tag: t.tag, before: t.before ?? null, after: t.after })),
      referrersApi: p.referrersApi ?? null,
      referrersIndexes: (p.referrersApi === false ? p.fallback : []).map((f) => ({
        tag: f.tag,
        before: f.before ?? null,
        add: f.add,
        ...(f.notIndex ? { index: false } : {}),
      })),
    };
  });
}
