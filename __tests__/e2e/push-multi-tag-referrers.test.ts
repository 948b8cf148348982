/**
 * Referrers follow the image. The source is a real docker-registry 2.8 holding a multi-arch release with
 * attached artifacts: two signatures and an SBOM as OCI 1.1 referrers (one on the index, one on a child), and a
 * cosign-shaped `sha256-<hex>.sig` tag whose signature is real ECDSA over cosign's simple-signing payload
 * (made here with node's crypto, so this file needs no cosign: the graph is read back and the signature verified;
 * push-multi-tag-cosign.test.ts checks a promotion with the real cosign). docker-registry 2.8 has no referrers API, so it serves them through the referrers tag
 * schema; the registry WITH the referrers API is a relay double in front of another docker-registry.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { generateKeyPairSync, verify, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { updateFallbackIndex } from '../../src/actions/push-multi-tag/fallback-index.js';
import { RegistryClient } from '../../src/core/oci/client.js';
import { readOciLayout } from '../../src/core/oci/layout.js';
import {
  cosignSignature,
  OCI_INDEX,
  OCI_MANIFEST,
  pushArtifact,
  putManifestBytes,
  referrer,
  referrersIndex,
  schemaTag,
  sha256,
  type Artifact,
} from '../support/artifacts.js';
import { runAction } from '../support/harness.js';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { startProxy, type CountingProxy } from '../support/proxy.js';
import { startRegistry, storageFingerprint, type RegistryService } from '../support/registry.js';

const SIG_TYPE = 'application/vnd.dev.cosign.artifact.sig.v1+json';
const SBOM_TYPE = 'application/spdx+json';

let work: string;
let image: GeneratedLayout;
let keys: { privateKey: KeyObject; publicKey: KeyObject };
const services: Array<{ stop(): Promise<void> }> = [];

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'ici-referrers-'));
  image = generateLayout(join(work, 'image'), {
    layers: [30_000],
    platforms: [
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64' },
    ],
  });
  keys = generateKeyPairSync('ec', { namedCurve: 'P-256' });
});
afterAll(async () => {
  await Promise.all(services.splice(0).map((s) => s.stop()));
  rmSync(work, { recursive: true, force: true });
});

async function registry(): Promise<RegistryService> {
  const r = await startRegistry();
  services.push(r);
  return r;
}
async function relay(target: string, referrersApi: boolean): Promise<CountingProxy> {
  const r = await startProxy({ target, referrersApi });
  services.push(r);
  return r;
}

function client(host: string) {
  return new RegistryClient({ registry: host, insecure: true, retryBaseDelayMs: 10 });
}

interface Attached {
  signature: Artifact;
  sbom: Artifact;
  childSignature: Artifact;
  cosign: Artifact;
}

/**
 * The release on `host` (through `via`, which may be a referrers-API double) with its artifacts; where the
 * registry has no referrers API the test keeps the `sha256-<hex>` indexes itself, as cosign/oras would.
 */
async function publishSource(via: string, repository: string, withApi: boolean): Promise<Attached> {
  const c = client(via);
  const child = image.children[1]!;
  const root = { mediaType: OCI_INDEX, digest: image.digest, size: 0 };
  root.size = statSync(join(image.dir, 'blobs', 'sha256', image.digest.slice(7))).size;
  const attached: Attached = {
    signature: referrer(root, SIG_TYPE, 'signature-1'),
    sbom: referrer(root, SBOM_TYPE, '{"spdxVersion":"SPDX-2.3"}'),
    childSignature: referrer(
      { mediaType: OCI_MANIFEST, digest: child.digest, size: child.size },
      SIG_TYPE,
      'child-sig',
    ),
    cosign: cosignSignature(keys.privateKey, `${via}/${repository}`, image.digest),
  };
  try {
    // The image itself, as any pipeline would have pushed it to staging.
    const local = await readOciLayout(image.dir);
    for (const b of local.blobs) {
      await c.uploadBlob(repository, { ...b, path: join(image.dir, 'blobs', 'sha256', b.digest.slice(7)) });
    }
    for (const m of local.manifests) await c.putManifest(repository, m.digest, m.bytes, m.mediaType);
    await c.putManifest(repository, 'staging', local.root.bytes, local.root.mediaType);
    for (const a of [attached.signature, attached.sbom, attached.childSignature])
      await pushArtifact(via, repository, a);
    await pushArtifact(via, repository, attached.cosign, `${schemaTag(image.digest)}.sig`);
    if (!withApi) {
      await c.putManifest(
        repository,
        schemaTag(image.digest),
        referrersIndex([attached.signature, attached.sbom]),
        OCI_INDEX,
      );
      await c.putManifest(
        repository,
        schemaTag(child.digest),
        referrersIndex([attached.childSignature]),
        OCI_INDEX,
      );
    }
  } finally {
    await c.close();
  }
  return attached;
}

/** Reads the destination's graph back: every artifact by digest with its blobs, the cosign tag, the signature. */
async function expectArtifactsAt(host: string, repository: string, attached: Attached) {
  const c = client(host);
  try {
    for (const a of Object.values(attached)) {
      const got = await c.getManifest(repository, a.digest);
      expect(got.bytes.equals(a.bytes)).toBe(true);
      for (const blob of a.blobs)
        expect(await c.headBlob(repository, sha256(blob))).toEqual({ size: blob.length });
    }
    const sig = await c.getManifest(repository, `${schemaTag(image.digest)}.sig`);
    expect(sig.digest).toBe(attached.cosign.digest);
    const layer = (
      JSON.parse(sig.bytes.toString()) as {
        layers: Array<{ digest: string; annotations: Record<string, string> }>;
      }
    ).layers[0]!;
    const path = join(work, 'payload-read-back');
    await c.downloadBlob(repository, layer.digest, path);
    const payload = readFileSync(path);
    const signed = JSON.parse(payload.toString()) as {
      critical: { image: { 'docker-manifest-digest': string } };
    };
    expect(signed.critical.image['docker-manifest-digest']).toBe(image.digest);
    expect(
      verify(
        'sha256',
        payload,
        keys.publicKey,
        Buffer.from(layer.annotations['dev.cosignproject.cosign/signature']!, 'base64'),
      ),
    ).toBe(true);
  } finally {
    await c.close();
  }
}

async function fallbackIndex(host: string, repository: string, subject: string) {
  const c = client(host);
  try {
    const found = await c.findManifest(repository, schemaTag(subject));
    return (
      found &&
      (JSON.parse(found.bytes.toString()) as {
        mediaType: string;
        manifests: Array<{ digest: string; artifactType?: string; annotations?: Record<string, string> }>;
      })
    );
  } finally {
    await c.close();
  }
}

describe.each([
  ['docker-registry 2.8 (referrers tag schema)', false],
  ['a registry with the referrers API (relay double)', true],
])('promote by digest from a source with %s', (_name, sourceApi) => {
  it('copies every referrer and the cosign tag; keeps the sha256-<hex> index where the destination lacks the API', async () => {
    const [source, plain, withApi] = await Promise.all([registry(), registry(), registry()]);
    const sourceVia = sourceApi ? (await relay(source.host, true)).host : source.host;
    const attached = await publishSource(sourceVia, 'staging/app', sourceApi);
    const apiRelay = await relay(withApi.host, true);
    // Something else already listed for the image at the plain destination: it must survive the merge.
    const other = referrer(
      { mediaType: OCI_INDEX, digest: image.digest, size: 1 },
      'application/vnd.other',
      'kept',
    );
    await pushArtifact(plain.host, 'prod/app', other);
    await putManifestBytes(
      plain.host,
      'prod/app',
      schemaTag(image.digest),
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: OCI_INDEX,
          manifests: [
            {
              mediaType: OCI_MANIFEST,
              digest: other.digest,
              size: other.bytes.length,
              artifactType: 'application/vnd.other',
            },
          ],
        }),
      ),
      OCI_INDEX,
    );

    const r = await runAction({
      action: 'push-multi-tag',
      inputs: {
        source: `docker://${sourceVia}/staging/app@${image.digest}`,
        repositories: `${plain.host}/prod/app\n${apiRelay.host}/prod/app`,
        tags: '1.0.0, latest',
        'tls-verify': 'false',
      },
    });
    expect(r.errors).toEqual([]);
    expect(r.main.exitCode).toBe(0);
    expect(r.log).toContain('3 referrer(s)');
    expect(r.log).toContain(`1 cosign tag(s)\n  ${schemaTag(image.digest)}.sig`);

    await expectArtifactsAt(plain.host, 'prod/app', attached);
    await expectArtifactsAt(withApi.host, 'prod/app', attached);

    // No referrers API at the plain registry: the tag schema lists every referrer, merged with what was there.
    const rootIndex = await fallbackIndex(plain.host, 'prod/app', image.digest);
    expect(rootIndex!.mediaType).toBe(OCI_INDEX);
    expect(rootIndex!.manifests.map((d) => d.digest).sort()).toEqual(
      [other.digest, attached.signature.digest, attached.sbom.digest].sort(),
    );
    const sbom = rootIndex!.manifests.find((d) => d.digest === attached.sbom.digest)!;
    expect(sbom.artifactType).toBe(SBOM_TYPE);
    expect(sbom.annotations).toEqual({
      'org.opencontainers.image.created': '2026-12-01T00:00:00Z',
      'test.kind': SBOM_TYPE,
    });
    const childIndex = await fallbackIndex(plain.host, 'prod/app', image.children[1]!.digest);
    expect(childIndex!.manifests.map((d) => d.digest)).toEqual([attached.childSignature.digest]);

    // The registry with the API indexed them itself (OCI-Subject): no tag-schema index is written there.
    expect(await fallbackIndex(withApi.host, 'prod/app', image.digest)).toBeUndefined();
    const api = client(apiRelay.host);
    const listed = await api.getReferrers('prod/app', image.digest);
    await api.close();
    expect(listed!.map((d) => d.digest).sort()).toEqual(
      [attached.signature.digest, attached.sbom.digest].sort(),
    );

    // Referrer manifests and blobs in phase 1 (by digest); the index tag and the cosign tag in phase 2.
    const summary = r.main.summary;
    expect(summary).toContain(`| ${plain.host}/prod/app:${schemaTag(image.digest)}.sig | (new) |`);
    expect(summary).toContain(`| ${plain.host}/prod/app:${schemaTag(image.digest)} | \``);
    expect(JSON.parse(r.outputs['pushed-refs']!)).toHaveLength(4);
  });
});

it('dry-run finds the referrers and plans the referrers index without writing anything', async () => {
  const [source, dest] = await Promise.all([registry(), registry()]);
  await publishSource(source.host, 'staging/app', false);
  const before = storageFingerprint(dest);
  const r = await runAction({
    action: 'push-multi-tag',
    inputs: {
      source: `docker://${source.host}/staging/app@${image.digest}`,
      repositories: `${dest.host}/prod/app`,
      tags: 'latest',
      'tls-verify': 'false',
      'dry-run': 'true',
    },
  });
  expect(r.errors).toEqual([]);
  expect(storageFingerprint(dest)).toEqual(before);
  const [plan] = JSON.parse(r.outputs.plan!) as Array<{
    referrersApi: boolean;
    referrersIndexes: Array<{ tag: string; before: string | null; add: number }>;
    tags: Array<{ tag: string }>;
  }>;
  expect(plan!.referrersApi).toBe(false);
  expect(plan!.referrersIndexes).toEqual([
    { tag: schemaTag(image.digest), before: null, add: 2 },
    { tag: schemaTag(image.children[1]!.digest), before: null, add: 1 },
  ]);
  expect(plan!.tags.map((t) => t.tag)).toEqual(['latest', `${schemaTag(image.digest)}.sig`]);
});

it('referrers: false leaves them behind', async () => {
  const [source, dest] = await Promise.all([registry(), registry()]);
  await publishSource(source.host, 'staging/app', false);
  const r = await runAction({
    action: 'push-multi-tag',
    inputs: {
      source: `docker://${source.host}/staging/app:staging`,
      repositories: `${dest.host}/prod/app`,
      tags: 'latest',
      'tls-verify': 'false',
      referrers: 'false',
    },
  });
  expect(r.main.exitCode).toBe(0);
  expect(await fallbackIndex(dest.host, 'prod/app', image.digest)).toBeUndefined();
  const c = client(dest.host);
  expect(await c.headManifest('prod/app', `${schemaTag(image.digest)}.sig`)).toBeUndefined();
  await c.close();
});

it('an OCI layout that holds referrers and a cosign tag brings them along', async () => {
  const dest = await registry();
  const layout = generateLayout(join(work, 'with-referrers'), { layers: [10_000] });
  const subject = { mediaType: OCI_MANIFEST, digest: layout.digest, size: 0 };
  subject.size = statSync(join(layout.dir, 'blobs', 'sha256', layout.digest.slice(7))).size;
  const sbom = referrer(subject, SBOM_TYPE, '{"spdxVersion":"SPDX-2.3","name":"layout"}');
  const sig = cosignSignature(keys.privateKey, 'staging/app', layout.digest);
  for (const a of [sbom, sig]) {
    for (const blob of [...a.blobs, a.bytes]) {
      writeFileSync(join(layout.dir, 'blobs', 'sha256', sha256(blob).slice(7)), blob);
    }
  }
  const indexPath = join(layout.dir, 'index.json');
  const index = JSON.parse(readFileSync(indexPath, 'utf8')) as { manifests: object[] };
  index.manifests.push(
    { mediaType: OCI_MANIFEST, digest: sbom.digest, size: sbom.bytes.length, artifactType: SBOM_TYPE },
    {
      mediaType: OCI_MANIFEST,
      digest: sig.digest,
      size: sig.bytes.length,
      annotations: { 'org.opencontainers.image.ref.name': `${schemaTag(layout.digest)}.sig` },
    },
  );
  writeFileSync(indexPath, JSON.stringify(index));

  const r = await runAction({
    action: 'push-multi-tag',
    inputs: {
      source: layout.transportRef,
      repositories: `${dest.host}/prod/layout`,
      tags: 'v1',
      'tls-verify': 'false',
    },
  });
  expect(r.errors).toEqual([]);
  const fallback = await fallbackIndex(dest.host, 'prod/layout', layout.digest);
  expect(fallback!.manifests.map((d) => [d.digest, d.artifactType])).toEqual([[sbom.digest, SBOM_TYPE]]);
  const c = client(dest.host);
  expect((await c.headManifest('prod/layout', `${schemaTag(layout.digest)}.sig`))?.digest).toBe(sig.digest);
  expect((await c.headManifest('prod/layout', 'v1'))?.digest).toBe(layout.digest);
  await c.close();
});

it('a referrers index update lost to a concurrent writer is read back and merged again', async () => {
  const dest = await registry();
  const subject = image.digest;
  const tag = schemaTag(subject);
  const subjectRef = { mediaType: OCI_INDEX, digest: subject, size: 1 };
  const theirArtifact = referrer(subjectRef, 'application/vnd.theirs', 'theirs');
  const ourArtifact = referrer(subjectRef, SIG_TYPE, 'ours');
  const theirs = { mediaType: OCI_MANIFEST, digest: theirArtifact.digest, size: theirArtifact.bytes.length };
  const ours = {
    mediaType: OCI_MANIFEST,
    digest: ourArtifact.digest,
    size: ourArtifact.bytes.length,
    artifactType: SIG_TYPE,
  };
  // docker-registry checks that an index lists manifests it has: store both artifacts first.
  await pushArtifact(dest.host, 'race/app', theirArtifact);
  await pushArtifact(dest.host, 'race/app', ourArtifact);
  await putManifestBytes(
    dest.host,
    'race/app',
    tag,
    Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [theirs] })),
    OCI_INDEX,
  );
  // Our first PUT "succeeds" but another writer's index is what stays under the tag (the relay answers 201
  // without storing), as when two pipelines update the tag at once on a registry without conditional PUTs.
  const racing = await startProxy({
    target: dest.host,
    fault: ({ kind, method, reference, index }) =>
      kind === 'manifest-put' && method === 'PUT' && reference === tag && index === 0
        ? { status: 201 }
        : undefined,
  });
  services.push(racing);
  const c = client(racing.host);
  const done = await updateFallbackIndex(c, 'race/app', tag, [ours]);
  await c.close();
  expect(racing.count('manifest-put')).toBe(2);
  expect(done.added).toBe(1);
  const now = await fallbackIndex(dest.host, 'race/app', subject);
  expect(now!.manifests.map((d) => d.digest)).toEqual([theirs.digest, ours.digest]);
});

it("a destination's cosign .sig holding a signature of its own keeps it; the source's is added, once", async () => {
  const [source, dest] = await Promise.all([registry(), registry()]);
  const attached = await publishSource(source.host, 'staging/app', false);
  const sigTag = `${schemaTag(image.digest)}.sig`;
  // Signed at production with a key of its own after an earlier promotion, as `cosign sign` appends there.
  const prodKeys = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const prodSig = cosignSignature(prodKeys.privateKey, `${dest.host}/prod/app`, image.digest);
  await pushArtifact(dest.host, 'prod/app', prodSig, sigTag);
  const promote = () =>
    runAction({
      action: 'push-multi-tag',
      inputs: {
        source: `docker://${source.host}/staging/app@${image.digest}`,
        repositories: `${dest.host}/prod/app`,
        tags: 'latest',
        'tls-verify': 'false',
      },
    });
  const r = await promote();
  expect(r.errors).toEqual([]);

  const c = client(dest.host);
  try {
    const merged = await c.getManifest('prod/app', sigTag);
    const parsed = JSON.parse(merged.bytes.toString()) as {
      config: { digest: string };
      layers: Array<{ digest: string; annotations: Record<string, string> }>;
    };
    const layerOf = (a: Artifact) =>
      (JSON.parse(a.bytes.toString()) as { layers: Array<{ digest: string; annotations: object }> })
        .layers[0];
    expect(parsed.layers).toEqual(
      [layerOf(prodSig), layerOf(attached.cosign)].map((l) => expect.objectContaining(l!)),
    );
    expect(r.log).toContain("(merged: the destination's entries kept)");
    // Each signature still verifies over its payload with its own key.
    for (const [layer, key] of [
      [parsed.layers[0]!, prodKeys.publicKey],
      [parsed.layers[1]!, keys.publicKey],
    ] as const) {
      const path = join(work, `payload-${layer.digest.slice(7, 19)}`);
      await c.downloadBlob('prod/app', layer.digest, path);
      const signature = Buffer.from(layer.annotations['dev.cosignproject.cosign/signature']!, 'base64');
      expect(verify('sha256', readFileSync(path), key, signature)).toBe(true);
    }
    const configPath = join(work, 'merged-config');
    await c.downloadBlob('prod/app', parsed.config.digest, configPath);
    const config = JSON.parse(readFileSync(configPath, 'utf8')) as { rootfs: { diff_ids: string[] } };
    expect(config.rootfs.diff_ids).toEqual(parsed.layers.map((l) => l.digest));

    // Promoted again: everything is there, the tag stays where it is.
    const again = await promote();
    expect(again.errors).toEqual([]);
    expect((await c.headManifest('prod/app', sigTag))?.digest).toBe(merged.digest);
    const [plan] = JSON.parse(again.outputs.plan!) as Array<{
      tags: Array<{ tag: string; before: string; after: string }>;
    }>;
    expect(plan!.tags.find((t) => t.tag === sigTag)).toEqual({
      tag: sigTag,
      before: merged.digest,
      after: merged.digest,
    });
  } finally {
    await c.close();
  }
});

describe('cosign .sig written while others sign at the destination (no conditional PUT)', () => {
  const layersOf = (bytes: Buffer) =>
    (JSON.parse(bytes.toString()) as { layers: Array<{ digest: string }> }).layers.map((l) => l.digest);
  const layerOf = (a: Artifact) => layersOf(a.bytes)[0]!;

  async function promoteVia(via: string, source: string) {
    return runAction({
      action: 'push-multi-tag',
      inputs: {
        source: `docker://${source}/staging/app@${image.digest}`,
        repositories: `${via}/prod/app`,
        tags: 'latest',
        'tls-verify': 'false',
      },
    });
  }

  it('a signature added between the lookups and phase 2 is kept: the tag is read again before the PUT', async () => {
    const [source, dest] = await Promise.all([registry(), registry()]);
    const attached = await publishSource(source.host, 'staging/app', false);
    const sigTag = `${schemaTag(image.digest)}.sig`;
    const prodKeys = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const first = cosignSignature(prodKeys.privateKey, `${dest.host}/prod/app`, image.digest);
    const late = cosignSignature(prodKeys.privateKey, `${dest.host}/prod/app/late`, image.digest);
    await pushArtifact(dest.host, 'prod/app', first, sigTag);
    let signed: Promise<void> | undefined;
    // Phase 1's first upload waits until another pipeline's `cosign sign` has replaced the .sig the lookups read.
    const slow = await startProxy({
      target: dest.host,
      hold: ({ kind }) =>
        kind === 'upload-start' ? (signed ??= pushArtifact(dest.host, 'prod/app', late, sigTag)) : undefined,
    });
    services.push(slow);
    const r = await promoteVia(slow.host, source.host);
    expect(r.errors).toEqual([]);
    expect(signed).toBeDefined();
    const c = client(dest.host);
    try {
      const now = await c.getManifest('prod/app', sigTag);
      // Before: the merge of the manifest the lookups read was written over the late signature.
      expect(layersOf(now.bytes)).toEqual([layerOf(late), layerOf(attached.cosign)]);
    } finally {
      await c.close();
    }
  });

  it('our .sig replaced right after the PUT by a signer who read it before: the read-back merges ours in again', async () => {
    const [source, dest] = await Promise.all([registry(), registry()]);
    const attached = await publishSource(source.host, 'staging/app', false);
    const sigTag = `${schemaTag(image.digest)}.sig`;
    const prodKeys = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const theirs = cosignSignature(prodKeys.privateKey, `${dest.host}/prod/app`, image.digest);
    // The relay answers our first .sig PUT 201 without storing it: their manifest is what stays.
    let sigPuts = 0;
    const racing = await startProxy({
      target: dest.host,
      fault: ({ kind, reference }) =>
        kind === 'manifest-put' && reference === sigTag && sigPuts++ === 0 ? { status: 201 } : undefined,
    });
    services.push(racing);
    await pushArtifact(dest.host, 'prod/app', theirs, sigTag);
    const r = await promoteVia(racing.host, source.host);
    expect(r.errors).toEqual([]);
    const c = client(dest.host);
    try {
      const now = await c.getManifest('prod/app', sigTag);
      expect(layersOf(now.bytes)).toEqual([layerOf(theirs), layerOf(attached.cosign)]);
      expect(sigPuts).toBe(2);
    } finally {
      await c.close();
    }
  });
});

it("a destination's .sig whose config the registry cannot serve fails that ref alone: the release tag is set, the .sig left as it is", async () => {
  const [source, dest] = await Promise.all([registry(), registry()]);
  await publishSource(source.host, 'staging/app', false);
  const sigTag = `${schemaTag(image.digest)}.sig`;
  const prodKeys = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const prodSig = cosignSignature(prodKeys.privateKey, `${dest.host}/prod/app`, image.digest);
  await pushArtifact(dest.host, 'prod/app', prodSig, sigTag);
  const configDigest = sha256(prodSig.blobs[0]!);
  // A registry that lost the blob (or a replica that has not got it yet): the merge cannot read its entries.
  const lost = await startProxy({
    target: dest.host,
    fault: ({ kind, reference }) =>
      kind === 'blob-get' && reference === configDigest
        ? { status: 404, body: '{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}' }
        : undefined,
  });
  services.push(lost);
  const r = await runAction({
    action: 'push-multi-tag',
    inputs: {
      source: `docker://${source.host}/staging/app@${image.digest}`,
      repositories: `${lost.host}/prod/app`,
      tags: 'latest',
      'tls-verify': 'false',
    },
  });
  expect(r.main.exitCode).toBe(1);
  // Before: the lookups failed, and with them the registry's whole push ('phase 1 failed'), latest not set.
  expect(JSON.parse(r.outputs['failed-refs']!)).toEqual([
    { ref: `${lost.host}/prod/app:${sigTag}`, reason: 'the registry answered HTTP 404 BLOB_UNKNOWN' },
  ]);
  expect(r.log).toContain(
    "(the destination's entries could not be read: the registry answered HTTP 404 BLOB_UNKNOWN)",
  );
  // Read again in phase 2 before anything was written over it.
  expect(lost.count('blob-get', (q) => q.path.endsWith(configDigest))).toBe(2);
  const c = client(dest.host);
  try {
    expect((await c.headManifest('prod/app', 'latest'))?.digest).toBe(image.digest);
    expect((await c.headManifest('prod/app', sigTag))?.digest).toBe(prodSig.digest);
  } finally {
    await c.close();
  }
});
