/**
 * Registry operations of the pull side that fit in memory: manifest HEAD/GET and blob HEAD. Existence checks
 * are HEADs (never a GET just to look); every manifest is checked against the digest that names it.
 */
import { DigestMismatchError, digestOf, verifyDigest } from './digest.js';
import { RegistryError } from './errors.js';
import { MANIFEST_LIMIT, MANIFEST_MEDIA_TYPES, MediaType, type Descriptor } from './media-types.js';
import { isValidDigest } from './reference.js';
import type { RegistryResponse } from './response.js';
import type { RetryBudget } from './retry.js';
import { pullScope } from './token.js';
import type { RegistryTransport } from './transport.js';

export async function headManifest(
  transport: RegistryTransport,
  repository: string,
  reference: string,
  accept: readonly string[] = MANIFEST_MEDIA_TYPES,
  budget: RetryBudget = transport.budget(),
): Promise<{ digest: string; mediaType: string; size: number } | undefined> {
  const what = `HEAD manifest ${repository}:${reference}`;
  const response = await transport.send(
    {
      method: 'HEAD',
      url: transport.url(`${repository}/manifests/${reference}`),
      scopes: [pullScope(repository)],
      headers: { accept: accept.join(', ') },
      ok: [200, 404],
      what,
    },
    budget,
  );
  await response.drain();
  if (response.status === 404) return undefined;
  const digest = response.header('docker-content-digest');
  if (!digest) {
    // Docker-Content-Digest is a SHOULD of the distribution-spec: some registries (Nexus, registry.redhat.io,
    // storage served as a registry) leave it out. The manifest is read instead (GET, its bytes hashed), as
    // docker, crane and regclient fall back to; by digest too, where the bytes are checked against it: a bare
    // 200 is also what a server that is no registry answers to everything.
    const found = await findManifest(transport, repository, reference, accept, budget);
    return found && { digest: found.digest, mediaType: found.mediaType, size: found.bytes.length };
  }
  // It is reported (a tag's digest before a push) and compared: only a digest, never text of the registry's.
  if (!isValidDigest(digest))
    throw new RegistryError(`${what}: the registry's Docker-Content-Digest is not a digest.`);
  if (isValidDigest(reference) && digest !== reference) {
    throw new DigestMismatchError(`manifest ${repository}@${reference}`, reference, digest);
  }
  return { digest, mediaType: contentType(response), size: contentLength(response) };
}

export async function getManifest(
  transport: RegistryTransport,
  repository: string,
  reference: string,
  accept: readonly string[] = MANIFEST_MEDIA_TYPES,
  budget: RetryBudget = transport.budget(),
): Promise<{ bytes: Buffer; mediaType: string; digest: string }> {
  const what = `GET manifest ${repository}:${reference}`;
  const { response, bytes } = await transport.sendAndRead(
    {
      method: 'GET',
      url: transport.url(`${repository}/manifests/${reference}`),
      scopes: [pullScope(repository)],
      headers: { accept: accept.join(', ') },
      ok: [200],
      what,
    },
    MANIFEST_LIMIT,
    budget,
  );
  let digest: string;
  if (isValidDigest(reference)) {
    verifyDigest(`manifest ${repository}@${reference}`, bytes, reference);
    digest = reference;
  } else {
    const claimed = response.header('docker-content-digest');
    digest = claimed ?? digestOf(bytes);
    if (claimed) verifyDigest(`manifest ${repository}:${reference}`, bytes, claimed);
  }
  return { bytes, mediaType: contentType(response), digest };
}

/** A manifest by tag or digest, or undefined when the registry has none under that reference (404). */
export async function findManifest(
  transport: RegistryTransport,
  repository: string,
  reference: string,
  accept: readonly string[] = MANIFEST_MEDIA_TYPES,
  budget: RetryBudget = transport.budget(),
): Promise<{ bytes: Buffer; mediaType: string; digest: string } | undefined> {
  try {
    return await getManifest(transport, repository, reference, accept, budget);
  } catch (error) {
    if (error instanceof RegistryError && error.status === 404) return undefined;
    throw error;
  }
}

/** Upper bound on referrers pages followed: a `Link` loop from a hostile registry must end. */
const MAX_REFERRER_PAGES = 20;

/**
 * The OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`, `Link` pages followed): the descriptors of
 * the manifests whose `subject` is `digest`, or undefined when the registry answers 404, which the
 * distribution-spec defines as "no referrers API here" (the caller falls back to the referrers tag schema),
 * or when it answers something that is not an image index. Pages stop once more than `max` descriptors are in: the caller refuses a list that long anyway.
 */
export async function getReferrers(
  transport: RegistryTransport,
  repository: string,
  digest: string,
  max = Infinity,
): Promise<Descriptor[] | undefined> {
  const what = `GET referrers of ${repository}@${digest}`;
  const found: Descriptor[] = [];
  let url: URL | undefined = transport.url(`${repository}/referrers/${digest}`);
  for (let page = 0; url && page < MAX_REFERRER_PAGES && found.length <= max; page++) {
    const { response, bytes } = await transport.sendAndRead(
      {
        method: 'GET',
        url,
        scopes: [pullScope(repository)],
        headers: { accept: MediaType.ociIndex },
        ok: [200, 404],
        what,
      },
      MANIFEST_LIMIT,
    );
    // The API answers an image index (the spec's MUST); anything else at that path is a front end's catch-all
    // page, not the API: read as "no API here", as oras-go does.
    if (response.status === 404 || contentType(response) !== MediaType.ociIndex) {
      return page === 0 ? undefined : found;
    }
    found.push(...indexDescriptors(bytes, what));
    const next = /<([^>]+)>\s*;\s*rel="?next"?/.exec(response.header('link') ?? '');
    const nextUrl = next ? new URL(next[1]!, response.url) : undefined;
    // Pages stay on the registry's own origin: a Link elsewhere would carry our token to another host.
    url = nextUrl && nextUrl.origin === response.url.origin ? nextUrl : undefined;
  }
  return found;
}

/** The descriptors of an image index body; anything that is not an index is refused. */
export function indexDescriptors(bytes: Buffer, what: string): Descriptor[] {
  let parsed: { manifests?: unknown };
  try {
    parsed = JSON.parse(bytes.toString('utf8')) as { manifests?: unknown };
  } catch {
    throw new RegistryError(`${what}: the answer is not JSON.`);
  }
  if (!Array.isArray(parsed.manifests)) throw new RegistryError(`${what}: the answer is not an image index.`);
  return (parsed.manifests as Descriptor[]).filter(
    (d) =>
      typeof d === 'object' &&
      d !== null &&
      typeof d.digest === 'string' &&
      isValidDigest(d.digest) &&
      typeof d.mediaType === 'string' &&
      Number.isSafeInteger(d.size),
  );
}

export async function headBlob(
  transport: RegistryTransport,
  repository: string,
  digest: string,
  budget: RetryBudget = transport.budget(),
): Promise<{ size: number } | undefined> {
  const response = await transport.send(
    {
      method: 'HEAD',
      url: transport.url(`${repository}/blobs/${digest}`),
      scopes: [pullScope(repository)],
      ok: [200, 404],
      what: `HEAD blob ${digest} in ${repository}`,
    },
    budget,
  );
  await response.drain();
  if (response.status === 404) return undefined;
  return { size: contentLength(response) };
}

function contentLength(response: RegistryResponse): number {
  return Number(response.header('content-length') ?? '0');
}

function contentType(response: RegistryResponse): string {
  return (response.header('content-type') ?? '').split(';')[0]!.trim();
}
