/**
 * Registry operations of the pull side that fit in memory: manifest HEAD/GET and blob HEAD. Existence checks
 * are HEADs (never a GET just to look); every manifest is checked against the digest that names it.
 */
import { DigestMismatchError, digestOf, verifyDigest } from './digest.js';
import { RegistryError } from './errors.js';
import { MANIFEST_MEDIA_TYPES } from './media-types.js';
import { isValidDigest } from './reference.js';
import type { RegistryResponse } from './response.js';
import { pullScope } from './token.js';
import type { RegistryTransport } from './transport.js';

/** containers/image's limit: a larger "manifest" is an attack or a mistake, not something to buffer. */
const MANIFEST_LIMIT = 4 * 1024 * 1024;

export async function headManifest(
  transport: RegistryTransport,
  repository: string,
  reference: string,
  accept: readonly string[] = MANIFEST_MEDIA_TYPES,
): Promise<{ digest: string; mediaType: string; size: number } | undefined> {
  const what = `HEAD manifest ${repository}:${reference}`;
  const response = await transport.send({
    method: 'HEAD',
    url: transport.url(`${repository}/manifests/${reference}`),
    scopes: [pullScope(repository)],
    headers: { accept: accept.join(', ') },
    ok: [200, 404],
    what,
  });
  await response.drain();
  if (response.status === 404) return undefined;
  const digest = response.header('docker-content-digest');
  if (!digest) throw new RegistryError(`${what}: the registry sent no digest.`);
  if (isValidDigest(reference) && digest !== reference) {
    throw new DigestMismatchError(`manifest ${repository}@${reference}`, reference, digest);
  }
  return { digest, mediaType: contentType(response), size: Number(response.header('content-length') ?? '0') };
}

export async function getManifest(
  transport: RegistryTransport,
  repository: string,
  reference: string,
  accept: readonly string[] = MANIFEST_MEDIA_TYPES,
): Promise<{ bytes: Buffer; mediaType: string; digest: string }> {
  const what = `GET manifest ${repository}:${reference}`;
  const response = await transport.send({
    method: 'GET',
    url: transport.url(`${repository}/manifests/${reference}`),
    scopes: [pullScope(repository)],
    headers: { accept: accept.join(', ') },
    ok: [200],
    what,
  });
  const bytes = await response.bytes(MANIFEST_LIMIT, what);
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

export async function headBlob(
  transport: RegistryTransport,
  repository: string,
  digest: string,
): Promise<{ size: number } | undefined> {
  const response = await transport.send({
    method: 'HEAD',
    url: transport.url(`${repository}/blobs/${digest}`),
    scopes: [pullScope(repository)],
    ok: [200, 404],
    what: `HEAD blob ${digest} in ${repository}`,
  });
  await response.drain();
  if (response.status === 404) return undefined;
  return { size: Number(response.header('content-length') ?? '0') };
}

function contentType(response: RegistryResponse): string {
  return (response.header('content-type') ?? '').split(';')[0]!.trim();
}
