/**
 * Finds what is attached to an image so it can follow the image to its destinations: OCI 1.1 referrers
 * (manifests whose `subject` is the image's index or one of its children) and cosign's tag-named artifacts
 * (`sha256-<hex>.sig`, `.att`, `.sbom`). At a source registry: the referrers API where it answers, else the
 * referrers tag schema (`sha256-<hex>`, an index of referrer descriptors), and the cosign tags in any case
 * (cosign writes them even where the API exists). In an OCI layout: what its index.json lists.
 *
 * Everything read here comes from outside: every manifest is checked against its digest, a referrer must name
 * the subject it was found for, and blobs are downloaded verified into the scratch directory.
 */
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { readRegularFile } from '../../core/files.js';
import type { RegistryClient } from '../../core/oci/client.js';
import { verifyDigest } from '../../core/oci/digest.js';
import { blobPath, INDEX_JSON_LIMIT, REF_NAME_ANNOTATION } from '../../core/oci/layout.js';
import { isIndexMediaType, MANIFEST_LIMIT, type Descriptor } from '../../core/oci/media-types.js';
import { boundedRunner, mapLimit } from '../../core/pool.js';
import { indexDescriptors } from '../../core/oci/pull.js';
import { isValidDigest } from '../../core/oci/reference.js';
import {
  COSIGN_SUFFIXES,
  referrersTag,
  type ArtifactTag,
  type Attachments,
  type PushBlob,
  type PushManifest,
  type Referrer,
} from './content.js';

interface ManifestJson {
  mediaType?: string;
  artifactType?: string;
  config?: Descriptor;
  layers?: Descriptor[];
  manifests?: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

function parseManifest(bytes: Buffer, what: string): ManifestJson {
  try {
    const parsed = JSON.parse(bytes.toString('utf8')) as unknown;
    if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed))
      return parsed as ManifestJson;
  } catch {
    // reported below
  }
  throw new Error(`${what} is not a JSON manifest.`);
}

/** The descriptor a referrers list holds for a manifest (distribution-spec "Listing Referrers"). */
export function referrerDescriptor(manifest: PushManifest): Descriptor {
  const parsed = parseManifest(manifest.bytes, `manifest ${manifest.digest}`);
  // The manifest says what it likes: only fields of the types the spec gives reach the descriptor.
  const text = (value: unknown) => (typeof value === 'string' && value ? value : undefined);
  const artifactType =
    text(parsed.artifactType) ?? (manifest.isIndex ? undefined : text(parsed.config?.mediaType));
  const descriptor: Descriptor = {
    mediaType: manifest.mediaType,
    digest: manifest.digest,
    size: manifest.bytes.length,
  };
  if (artifactType) descriptor.artifactType = artifactType;
  const annotations: unknown = parsed.annotations;
  if (
    typeof annotations === 'object' &&
    annotations !== null &&
    !Array.isArray(annotations) &&
    Object.keys(annotations).length > 0 &&
    Object.values(annotations).every((v) => typeof v === 'string')
  ) {
    descriptor.annotations = annotations as Record<string, string>;
  }
  return descriptor;
}

function blobsOf(parsed: ManifestJson): Descriptor[] {
  return [...(parsed.config ? [parsed.config] : []), ...(parsed.layers ?? [])].filter(
    (d) => typeof d?.digest === 'string' && isValidDigest(d.digest) && Number.isSafeInteger(d.size),
  );
}

/** Reads manifests and blobs from somewhere; a registry and a layout each provide one. */
interface Store {
  manifest(reference: string): Promise<PushManifest | undefined>;
  blob(descriptor: Descriptor): Promise<PushBlob>;
}

/**
 * What one push copies at most from a source: each bound is a hostile registry's lever on our memory (manifests
 * are held whole), disk and request count. Releases carry a handful of signatures, attestations and SBOMs.
 */
export const ATTACHED_LIMITS = { manifests: 1000, blobs: 10_000, manifestBytes: 64 * 1024 * 1024 } as const;

/** Manifests and blobs fetched from the source at once while its graph is walked. */
const FETCH_CONCURRENCY = 8;

class Collector {
  /** Promises, so parallel lookups that meet the same manifest or blob (the empty config) fetch it once. */
  private readonly manifests = new Map<string, Promise<void>>();
  private readonly fetched = new Map<string, Promise<PushManifest | undefined>>();
  private readonly listed = new Map<string, Promise<void>>();
  private readonly taken: PushManifest[] = [];
  private readonly blobs = new Map<string, Promise<PushBlob>>();
  private readonly referrers: Referrer[] = [];
  private readonly artifactTags: ArtifactTag[] = [];
  private manifestBytes = 0;
  private readonly run = boundedRunner(FETCH_CONCURRENCY);

  constructor(
    private readonly store: Store,
    /** Blobs the image itself brings: never fetched twice. */
    private readonly known: ReadonlySet<string>,
  ) {}

  /** A manifest, its children (one level of index) and all their blobs; children are listed first. */
  take(manifest: PushManifest, depth = 0): Promise<void> {
    let taking = this.manifests.get(manifest.digest);
    if (!taking) {
      taking = this.takeNew(manifest, depth);
      this.manifests.set(manifest.digest, taking);
    }
    return taking;
  }

  /** A manifest by digest from the store, fetched once, counted against the limits. */
  private fetch(digest: string): Promise<PushManifest | undefined> {
    let fetching = this.fetched.get(digest);
    if (!fetching) {
      const nth = this.fetched.size + 1;
      fetching = this.run(async () => {
        if (nth > ATTACHED_LIMITS.manifests) {
          throw new Error(
            `the source attaches more than ${ATTACHED_LIMITS.manifests} manifests to the image; refused.`,
          );
        }
        const found = await this.store.manifest(digest);
        if (found) this.count(found);
        return found;
      });
      this.fetched.set(digest, fetching);
    }
    return fetching;
  }

  private count(manifest: PushManifest): void {
    this.manifestBytes += manifest.bytes.length;
    if (this.manifestBytes > ATTACHED_LIMITS.manifestBytes) {
      throw new Error(
        `the manifests attached to the image at the source exceed ${ATTACHED_LIMITS.manifestBytes} bytes; refused.`,
      );
    }
  }

  private async takeNew(manifest: PushManifest, depth: number): Promise<void> {
    const parsed = parseManifest(manifest.bytes, `manifest ${manifest.digest}`);
    if (manifest.isIndex && depth === 0) {
      const children: unknown = parsed.manifests ?? [];
      if (!Array.isArray(children)) throw new Error(`manifest ${manifest.digest} is not an image index.`);
      // A child is fetched by digest only: anything else would be a tag or a path elsewhere on the registry.
      const digests = children.map((child: Descriptor | null) => child?.digest);
      if (!digests.every((d): d is string => typeof d === 'string' && isValidDigest(d))) {
        throw new Error(`manifest ${manifest.digest} lists a child with an invalid digest; refused.`);
      }
      await Promise.all(
        digests.map(async (digest) => {
          const found = await this.fetch(digest);
          if (!found) throw new Error(`manifest ${digest} (listed by ${manifest.digest}) is missing.`);
          await this.take(found, depth + 1);
        }),
      );
    }
    await Promise.all(
      blobsOf(parsed)
        .filter((d) => !this.known.has(d.digest))
        .map((d) => {
          if (!this.blobs.has(d.digest)) {
            const nth = this.blobs.size + 1;
            this.blobs.set(
              d.digest,
              this.run(() => {
                if (nth > ATTACHED_LIMITS.blobs) {
                  throw new Error(
                    `the source attaches more than ${ATTACHED_LIMITS.blobs} blobs to the image; refused.`,
                  );
                }
                return this.store.blob(d);
              }),
            );
          }
          return this.blobs.get(d.digest)!;
        }),
    );
    this.taken.push(manifest);
  }

  /** A manifest a list names as a referrer of `subject`; a list naming one twice costs one fetch. */
  referrer(subject: string, digest: string): Promise<void> {
    const key = `${subject} ${digest}`;
    let checking = this.listed.get(key);
    if (!checking) {
      checking = this.referrerNew(subject, digest);
      this.listed.set(key, checking);
    }
    return checking;
  }

  private async referrerNew(subject: string, digest: string): Promise<void> {
    const manifest = await this.fetch(digest);
    if (!manifest) throw new Error(`referrer ${digest} of ${subject} is listed but missing.`);
    // A list may say anything; only a manifest that names this subject is one of its referrers.
    if (parseManifest(manifest.bytes, `referrer ${digest}`).subject?.digest !== subject) return;
    this.referrers.push({ subject, descriptor: referrerDescriptor(manifest) });
    await this.take(manifest);
  }

  async artifactTag(tag: string, manifest: PushManifest): Promise<void> {
    this.count(manifest);
    this.artifactTags.push({ tag, manifest });
    await this.take(manifest);
  }

  /** What was found, in a stable order (subjects as given, then by digest or tag) whatever finished first. */
  async result(subjects: readonly string[]): Promise<Attachments> {
    const bySubject = (a: Referrer, b: Referrer) =>
      subjects.indexOf(a.subject) - subjects.indexOf(b.subject) ||
      a.descriptor.digest.localeCompare(b.descriptor.digest);
    return {
      manifests: this.taken,
      blobs: await Promise.all(this.blobs.values()),
      referrers: [...this.referrers].sort(bySubject),
      artifactTags: [...this.artifactTags].sort((a, b) => a.tag.localeCompare(b.tag)),
    };
  }
}

/** Subjects checked at once at a source registry. */
const SUBJECT_CONCURRENCY = 8;

export interface RegistrySource {
  client: RegistryClient;
  repository: string;
  /** Where downloaded blobs go (removed by the caller). */
  scratch: string;
}

/** Referrers and cosign artifacts of `subjects` in a registry repository. */
export async function attachmentsInRegistry(
  source: RegistrySource,
  subjects: readonly string[],
  known: ReadonlySet<string>,
): Promise<Attachments> {
  const { client, repository } = source;
  const dir = join(source.scratch, 'attached');
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  const asPush = (m: { bytes: Buffer; mediaType: string; digest: string }): PushManifest => ({
    ...m,
    isIndex: isIndexMediaType(m.mediaType),
  });
  const collector = new Collector(
    {
      manifest: async (reference) => {
        const found = await client.findManifest(repository, reference);
        return found && asPush(found);
      },
      blob: async (d) => {
        const path = blobPath(dir, d.digest);
        await mkdir(join(path, '..'), { recursive: true });
        await client.downloadBlob(repository, d.digest, path, { size: d.size });
        return { digest: d.digest, size: d.size, path };
      },
    },
    known,
  );
  await mapLimit(subjects, SUBJECT_CONCURRENCY, async (subject) => {
    const tag = referrersTag(subject);
    // All lookups at once: one round trip whatever the source supports.
    const [api, fallback, ...cosign] = await Promise.all([
      client.getReferrers(repository, subject, ATTACHED_LIMITS.manifests),
      client.findManifest(repository, tag),
      ...COSIGN_SUFFIXES.map((s) => client.findManifest(repository, `${tag}.${s}`)),
    ]);
    let listed: Descriptor[] = api ?? [];
    if (!api && fallback && isIndexMediaType(fallback.mediaType)) {
      listed = indexDescriptors(fallback.bytes, `referrers tag ${repository}:${tag}`);
    }
    // Refused before any is fetched: a list this long is an attack or a mistake, not a release.
    if (new Set(listed.map((d) => d.digest)).size > ATTACHED_LIMITS.manifests) {
      throw new Error(
        `${repository}@${subject} lists more than ${ATTACHED_LIMITS.manifests} referrers at the source; ` +
          'one push copies at most that many.',
      );
    }
    await Promise.all([
      ...listed.map((d) => collector.referrer(subject, d.digest)),
      ...cosign.map((found, i) =>
        found ? collector.artifactTag(`${tag}.${COSIGN_SUFFIXES[i]}`, asPush(found)) : undefined,
      ),
    ]);
  });
  return await collector.result(subjects);
}

/** Referrers and cosign artifacts of `subjects` that an OCI layout's index.json lists. */
export async function attachmentsInLayout(
  dir: string,
  subjects: readonly string[],
  known: ReadonlySet<string>,
): Promise<Attachments> {
  const readBlob = async (digest: string): Promise<Buffer | undefined> => {
    if (!isValidDigest(digest)) return undefined;
    const bytes = await readRegularFile(blobPath(dir, digest), MANIFEST_LIMIT).catch(
      (error: NodeJS.ErrnoException) => (error.code === 'ENOENT' ? undefined : Promise.reject(error)),
    );
    if (bytes) verifyDigest(`manifest ${digest} in ${dir}`, bytes, digest);
    return bytes;
  };
  const collector = new Collector(
    {
      manifest: async (digest) => {
        const bytes = await readBlob(digest);
        if (!bytes) return undefined;
        const mediaType = parseManifest(bytes, `manifest ${digest}`).mediaType ?? '';
        return { digest, mediaType, bytes, isIndex: isIndexMediaType(mediaType) };
      },
      blob: async (d) => {
        const path = blobPath(dir, d.digest);
        const info = await stat(path).catch(() => undefined);
        if (!info) throw new Error(`the OCI layout ${dir} lacks blob ${d.digest}.`);
        return { digest: d.digest, size: d.size, path };
      },
    },
    known,
  );
  const index = JSON.parse(
    (await readRegularFile(join(dir, 'index.json'), INDEX_JSON_LIMIT)).toString('utf8'),
  ) as {
    manifests?: Descriptor[];
  };
  const bySchemaTag = new Map(subjects.map((s) => [referrersTag(s), s]));
  const wanted = new Set(subjects);
  for (const entry of index.manifests ?? []) {
    if (wanted.has(entry.digest)) continue;
    const name = entry.annotations?.[REF_NAME_ANNOTATION] ?? '';
    const cosign = /^(.+)\.(sig|att|sbom)$/.exec(name);
    const bytes = await readBlob(entry.digest);
    if (!bytes) continue;
    const parsed = parseManifest(bytes, `manifest ${entry.digest} in ${dir}`);
    const mediaType = entry.mediaType || parsed.mediaType || '';
    const manifest = { digest: entry.digest, mediaType, bytes, isIndex: isIndexMediaType(mediaType) };
    if (cosign && bySchemaTag.has(cosign[1]!)) {
      await collector.artifactTag(name, manifest);
    } else if (bySchemaTag.has(name) && manifest.isIndex) {
      const subject = bySchemaTag.get(name)!;
      for (const d of indexDescriptors(bytes, `referrers index ${name} in ${dir}`)) {
        await collector.referrer(subject, d.digest);
      }
    } else if (parsed.subject && wanted.has(parsed.subject.digest)) {
      await collector.referrer(parsed.subject.digest, entry.digest);
    }
  }
  return await collector.result(subjects);
}
