/**
 * Artifacts attached to images, as signing and SBOM tools write them, for tests and the benchmark: OCI 1.1
 * referrers (empty config, one layer, a `subject`) and cosign's `sha256-<hex>.sig` signature manifests (the
 * simple-signing payload as a layer, the ECDSA signature in its annotation — real signatures made with node's
 * crypto, verifiable with the public key). `pushArtifact` stores one on a registry with plain fetch.
 */
import { createHash, sign, type KeyObject } from 'node:crypto';

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const EMPTY = 'application/vnd.oci.empty.v1+json';

export interface Artifact {
  digest: string;
  bytes: Buffer;
  mediaType: string;
  /** Config and layers, as bytes. */
  blobs: Buffer[];
}

export interface Subject {
  mediaType: string;
  digest: string;
  size: number;
}

export const sha256 = (data: Buffer): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;
/** The referrers tag schema for a sha256 digest. */
export const schemaTag = (digest: string): string => digest.replace(':', '-');

function manifest(body: object, blobs: Buffer[]): Artifact {
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, ...body }));
  return { digest: sha256(bytes), bytes, mediaType: OCI_MANIFEST, blobs };
}

const descriptor = (mediaType: string, data: Buffer, annotations?: Record<string, string>) => ({
  mediaType,
  digest: sha256(data),
  size: data.length,
  ...(annotations ? { annotations } : {}),
});

/** An OCI 1.1 referrer: empty config, one layer holding `payload`, `subject` naming what it is about. */
export function referrer(subject: Subject, artifactType: string, payload: string): Artifact {
  const empty = Buffer.from('{}');
  const layer = Buffer.from(payload);
  return manifest(
    {
      artifactType,
      config: descriptor(EMPTY, empty),
      layers: [descriptor(artifactType, layer)],
      subject,
      annotations: { 'org.opencontainers.image.created': '2026-12-01T00:00:00Z', 'test.kind': artifactType },
    },
    [empty, layer],
  );
}

/** What `cosign sign` stores under `sha256-<hex>.sig`: simple-signing payload, signature in an annotation. */
export function cosignSignature(key: KeyObject, reference: string, digest: string): Artifact {
  const payload = Buffer.from(
    JSON.stringify({
      critical: {
        identity: { 'docker-reference': reference },
        image: { 'docker-manifest-digest': digest },
        type: 'cosign container image signature',
      },
      optional: null,
    }),
  );
  const config = Buffer.from(
    JSON.stringify({
      architecture: '',
      created: '0001-01-01T00:00:00Z',
      history: [{ created: '0001-01-01T00:00:00Z' }],
      os: '',
      rootfs: { type: 'layers', diff_ids: [sha256(payload)] },
      config: {},
    }),
  );
  const signature = sign('sha256', payload, key).toString('base64');
  return manifest(
    {
      config: descriptor('application/vnd.oci.image.config.v1+json', config),
      layers: [
        descriptor('application/vnd.dev.cosign.simplesigning.v1+json', payload, {
          'dev.cosignproject.cosign/signature': signature,
        }),
      ],
    },
    [config, payload],
  );
}

/** The referrers tag schema index listing `items`, as a client without the referrers API keeps it. */
export function referrersIndex(items: readonly Artifact[]): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: items.map((a) => {
        const parsed = JSON.parse(a.bytes.toString()) as { artifactType?: string; annotations?: object };
        return {
          mediaType: a.mediaType,
          digest: a.digest,
          size: a.bytes.length,
          ...(parsed.artifactType ? { artifactType: parsed.artifactType } : {}),
          ...(parsed.annotations ? { annotations: parsed.annotations } : {}),
        };
      }),
    }),
  );
}

async function ok(response: Response, what: string): Promise<Response> {
  if (!response.ok) throw new Error(`${what}: HTTP ${response.status} ${await response.text()}`);
  return response;
}

/** Stores an artifact's blobs and manifest (by digest, or under `tag`) on an open registry over http. */
export async function pushArtifact(
  host: string,
  repository: string,
  a: Artifact,
  tag?: string,
): Promise<void> {
  const base = `http://${host}/v2/${repository}`;
  for (const blob of a.blobs) {
    const start = await ok(await fetch(`${base}/blobs/uploads/`, { method: 'POST' }), 'start upload');
    await start.arrayBuffer();
    const url = new URL(start.headers.get('location')!, `http://${host}`);
    url.searchParams.set('digest', sha256(blob));
    const put = await ok(
      await fetch(url, {
        method: 'PUT',
        body: new Uint8Array(blob),
        headers: { 'content-type': 'application/octet-stream' },
      }),
      'upload',
    );
    await put.arrayBuffer();
  }
  await putManifestBytes(host, repository, tag ?? a.digest, a.bytes, a.mediaType);
}

export async function putManifestBytes(
  host: string,
  repository: string,
  reference: string,
  bytes: Buffer,
  mediaType: string,
): Promise<void> {
  const put = await ok(
    await fetch(`http://${host}/v2/${repository}/manifests/${reference}`, {
      method: 'PUT',
      body: new Uint8Array(bytes),
      headers: { 'content-type': mediaType },
    }),
    `PUT manifest ${reference}`,
  );
  await put.arrayBuffer();
}
