/**
 * Promotion from a hostile `docker://` source: the image itself sits in a real docker-registry 2.8, but what the
 * source says about its referrers comes from a relay that answers as an attacker would (the referrers API
 * listing the same referrer many times or thousands of them, a referrer with hundreds of layers, a referrer
 * index naming a path instead of a digest). Every answer is bounded: the relay counts what the push asked.
 * The destination is a real docker-registry 2.8 (no referrers API: the `sha256-<hex>` index is kept there).
 */
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RegistryClient } from '../../src/core/oci/client.js';
import { readOciLayout } from '../../src/core/oci/layout.js';
import {
  OCI_INDEX,
  OCI_MANIFEST,
  pushArtifact,
  putManifestBytes,
  referrer,
  schemaTag,
  sha256,
  type Artifact,
} from '../support/artifacts.js';
import { runAction } from '../support/harness.js';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { startProxy, type Fault, type ProxyOptions, type RequestRecord } from '../support/proxy.js';
import { startRegistry, storageFingerprint, type RegistryService } from '../support/registry.js';

const SIG_TYPE = 'application/vnd.dev.cosign.artifact.sig.v1+json';
const REPO = 'staging/app';

let work: string;
let image: GeneratedLayout;
let source: RegistryService;
let subject: { mediaType: string; digest: string; size: number };
const services: Array<{ stop(): Promise<void> }> = [];

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'ici-hostile-referrers-'));
  image = generateLayout(join(work, 'image'), { layers: [5_000] });
  source = await startRegistry();
  services.push(source);
  subject = await publishImage(REPO);
});
afterAll(async () => {
  await Promise.all(services.splice(0).map((s) => s.stop()));
  rmSync(work, { recursive: true, force: true });
});

/** The image in a repository of the source registry, by digest. */
async function publishImage(repository: string) {
  const c = client(source.host);
  try {
    const local = await readOciLayout(image.dir);
    for (const b of local.blobs) {
      await c.uploadBlob(repository, { ...b, path: join(image.dir, 'blobs', 'sha256', b.digest.slice(7)) });
    }
    await c.putManifest(repository, local.root.digest, local.root.bytes, local.root.mediaType);
    return { mediaType: local.root.mediaType, digest: local.root.digest, size: local.root.bytes.length };
  } finally {
    await c.close();
  }
}

function client(host: string) {
  return new RegistryClient({ registry: host, insecure: true, retryBaseDelayMs: 10 });
}

async function registry(): Promise<RegistryService> {
  const r = await startRegistry();
  services.push(r);
  return r;
}

async function relay(options: ProxyOptions) {
  const r = await startProxy(options);
  services.push(r);
  return r;
}

/** What the hostile source answers itself, by request kind and last path component; the rest is relayed. */
function hostile(answers: Map<string, Fault>): ProxyOptions['fault'] {
  return ({ kind, reference }) => answers.get(`${kind} ${reference}`);
}

const referrersAnswer = (manifests: object[]): Fault => ({
  status: 200,
  headers: { 'content-type': OCI_INDEX },
  body: JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests }),
});

const manifestAnswer = (bytes: Buffer, mediaType: string): Fault => ({
  status: 200,
  headers: { 'content-type': mediaType, 'docker-content-digest': sha256(bytes) },
  body: bytes,
});

const descriptorOf = (a: { digest: string; bytes: Buffer; mediaType: string }) => ({
  mediaType: a.mediaType,
  digest: a.digest,
  size: a.bytes.length,
});

function push(from: string, to: string, extra: Record<string, string> = {}) {
  return runAction({
    action: 'push-multi-tag',
    inputs: {
      source: `docker://${from}/${REPO}@${image.digest}`,
      repositories: `${to}/prod/app`,
      tags: 'latest',
      'tls-verify': 'false',
      ...extra,
    },
  });
}

const randomDigest = (i: number) => sha256(Buffer.from(`not there ${i} ${Math.random()}`));

it('a referrer the referrers API lists 50 times is fetched once and listed once at the destination', async () => {
  const sig = referrer(subject, SIG_TYPE, 'listed-many-times');
  await pushArtifact(source.host, REPO, sig);
  const via = await relay({
    target: source.host,
    fault: hostile(
      new Map([[`referrers ${image.digest}`, referrersAnswer(Array(50).fill(descriptorOf(sig)))]]),
    ),
  });
  const dest = await registry();
  const r = await push(via.host, dest.host);
  expect(r.errors).toEqual([]);
  expect(r.main.exitCode).toBe(0);
  expect(via.count('manifest-get', (rec) => rec.path.endsWith(sig.digest))).toBe(1);
  const c = client(dest.host);
  const index = await c.getManifest('prod/app', schemaTag(image.digest));
  await c.close();
  const listed = (JSON.parse(index.bytes.toString()) as { manifests: Array<{ digest: string }> }).manifests;
  expect(listed.map((d) => d.digest)).toEqual([sig.digest]);
});

it('a referrers list longer than the limit is refused before any of it is fetched', async () => {
  const listed = Array.from({ length: 1500 }, (_, i) => ({
    mediaType: OCI_MANIFEST,
    digest: randomDigest(i),
    size: 100,
  }));
  const via = await relay({
    target: source.host,
    fault: hostile(new Map([[`referrers ${image.digest}`, referrersAnswer(listed)]])),
  });
  const dest = await registry();
  const r = await push(via.host, dest.host);
  expect(r.main.exitCode).toBe(1);
  expect(r.errors.join('\n')).toMatch(/more than 1000 referrers/);
  const asked = new Set(listed.map((d) => d.digest));
  expect(via.count('manifest-get', (rec) => asked.has(rec.path.split('/').pop()!))).toBe(0);
});

it('a referrer with 200 layers: at most 8 requests at a time to the source, none after the first failure', async () => {
  const empty = Buffer.from('{}');
  const layers = Array.from({ length: 200 }, (_, i) => ({
    mediaType: 'application/octet-stream',
    digest: randomDigest(i),
    size: 10,
  }));
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: SIG_TYPE,
      config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: sha256(empty), size: 2 },
      layers,
      subject,
    }),
  );
  const wide = { digest: sha256(bytes), bytes, mediaType: OCI_MANIFEST };
  let inFlight = 0;
  let most = 0;
  const via = await relay({
    target: source.host,
    fault: hostile(
      new Map([
        [`referrers ${image.digest}`, referrersAnswer([descriptorOf(wide)])],
        [`manifest-get ${wide.digest}`, manifestAnswer(bytes, OCI_MANIFEST)],
      ]),
    ),
    // Each blob request is held a moment, so requests sent at once are seen at once.
    hold: (rec: RequestRecord) => {
      if (rec.kind !== 'blob-get') return undefined;
      inFlight++;
      most = Math.max(most, inFlight);
      return new Promise<void>((resolve) =>
        setTimeout(() => {
          inFlight--;
          resolve();
        }, 100),
      );
    },
  });
  const dest = await registry();
  const r = await push(via.host, dest.host);
  expect(r.main.exitCode).toBe(1);
  expect(most).toBeLessThanOrEqual(8);
  expect(via.count('blob-get')).toBeLessThan(20);
});

it('a referrer index naming a child by a path, not a digest, is refused without asking outside the repository', async () => {
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      artifactType: SIG_TYPE,
      manifests: [{ mediaType: OCI_MANIFEST, digest: '../../../../other/app/manifests/latest', size: 10 }],
      subject,
    }),
  );
  const evil = { digest: sha256(bytes), bytes, mediaType: OCI_INDEX };
  const via = await relay({
    target: source.host,
    fault: hostile(
      new Map([
        [`referrers ${image.digest}`, referrersAnswer([descriptorOf(evil)])],
        [`manifest-get ${evil.digest}`, manifestAnswer(bytes, OCI_INDEX)],
      ]),
    ),
  });
  const dest = await registry();
  const r = await push(via.host, dest.host);
  expect(r.main.exitCode).toBe(1);
  expect(r.errors.join('\n')).toMatch(/invalid digest/);
  expect(via.records.filter((rec) => rec.repository && rec.repository !== REPO)).toEqual([]);
});

it("keeps the destination index's foreign entries and fields it does not understand, byte for byte", async () => {
  const sig = referrer(subject, SIG_TYPE, 'merged-into-foreign');
  await pushArtifact(source.host, REPO, sig);
  const dest = await registry();
  const theirs = referrer(subject, 'application/vnd.theirs', 'foreign');
  await pushArtifact(dest.host, 'prod/app', theirs);
  // Written by another tool: an entry without mediaType and an annotation on the index itself.
  const foreignEntry = { digest: theirs.digest, size: theirs.bytes.length, 'x-tool': { keep: true } };
  await putManifestBytes(
    dest.host,
    'prod/app',
    schemaTag(image.digest),
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: [foreignEntry],
        annotations: { 'com.example.owner': 'other-tool' },
      }),
    ),
    OCI_INDEX,
  );
  const via = await relay({
    target: source.host,
    fault: hostile(new Map([[`referrers ${image.digest}`, referrersAnswer([descriptorOf(sig)])]])),
  });
  const r = await push(via.host, dest.host);
  expect(r.errors).toEqual([]);
  const c = client(dest.host);
  const index = await c.getManifest('prod/app', schemaTag(image.digest));
  await c.close();
  const parsed = JSON.parse(index.bytes.toString()) as {
    manifests: Array<{ digest: string }>;
    annotations?: object;
  };
  expect(parsed.manifests[0]).toEqual(foreignEntry);
  expect(parsed.manifests.map((d) => d.digest)).toEqual([theirs.digest, sig.digest]);
  expect(parsed.annotations).toEqual({ 'com.example.owner': 'other-tool' });
});

it('a dry run with hostile annotations writes nothing anywhere and lets none of them into log, outputs or summary', async () => {
  const attack = '\n::error::pwned %0A::warning::x \u001b[31mred\u202eevil';
  const sig = referrer(subject, `${SIG_TYPE}${attack}`, 'annotated');
  const parsed = JSON.parse(sig.bytes.toString()) as { annotations: Record<string, string> };
  parsed.annotations['x'] = attack;
  const bytes = Buffer.from(JSON.stringify(parsed));
  const annotated: Artifact = { ...sig, bytes, digest: sha256(bytes) };
  await pushArtifact(source.host, REPO, annotated);
  const dest = await registry();
  const writes = (rec: RequestRecord) => !['GET', 'HEAD'].includes(rec.method);
  const destVia = await relay({ target: dest.host });
  // The source's referrers API lists the signature, with hostile text of its own in the descriptor.
  const srcWithList = await relay({
    target: source.host,
    fault: hostile(
      new Map([
        [
          `referrers ${image.digest}`,
          referrersAnswer([
            { ...descriptorOf(annotated), artifactType: `x${attack}`, annotations: parsed.annotations },
          ]),
        ],
      ]),
    ),
  });
  const before = [storageFingerprint(source), storageFingerprint(dest)];
  const r = await push(srcWithList.host, destVia.host, { 'dry-run': 'true' });
  expect(r.main.exitCode).toBe(0);
  expect(r.errors).toEqual([]);
  expect(r.warnings).toEqual([]);
  expect([storageFingerprint(source), storageFingerprint(dest)]).toEqual(before);
  expect(srcWithList.records.filter(writes)).toEqual([]);
  expect(destVia.records.filter(writes)).toEqual([]);
  const [plan] = JSON.parse(r.outputs.plan!) as Array<{ referrersIndexes: Array<{ add: number }> }>;
  expect(plan!.referrersIndexes).toEqual([{ tag: schemaTag(image.digest), before: null, add: 1 }]);
  for (const text of [r.main.summary, ...Object.values(r.outputs)]) {
    for (const bad of ['pwned', '\u001b', '\u202e']) expect(text).not.toContain(bad);
  }
});

it('a tag lookup answered with a "digest" that is markup fails the lookups; none of it reaches summary or outputs', async () => {
  const dest = await registry();
  await pushArtifact(dest.host, 'prod/app', referrer(subject, SIG_TYPE, 'previous'), 'latest');
  const lying = await relay({
    target: dest.host,
    // What the tag points at "before": markup that would leave the summary's code span.
    mapResponseHeaders: (kind, headers) =>
      kind === 'manifest-head' && headers['docker-content-digest']
        ? { ...headers, 'docker-content-digest': '`<img src="http://evil.example/x.png">`:0' }
        : headers,
  });
  const r = await push(source.host, lying.host);
  expect(r.main.exitCode).toBe(1);
  expect(r.errors.join('\n')).toMatch(/not a digest/);
  for (const text of [r.main.summary, ...Object.values(r.outputs)]) expect(text).not.toContain('evil');
});

it('an endless referrers answer is read up to the manifest limit (4 MiB), then refused', async () => {
  const via = await relay({
    target: source.host,
    fault: ({ kind }) => (kind === 'referrers' ? { endless: true } : undefined),
  });
  const dest = await registry();
  const r = await push(via.host, dest.host);
  expect(r.main.exitCode).toBe(1);
  expect(r.errors.join('\n')).toMatch(/larger than 4194304 bytes; refused/);
  const sent = via.records.filter((rec) => rec.kind === 'referrers').reduce((n, rec) => n + rec.bytesDown, 0);
  // What the relay managed to write before the push hung up, socket buffers included.
  expect(sent).toBeLessThan(32 * 1024 * 1024);
});

it('a referrer whose bytes do not match its digest, and a cosign tag whose blob is absent, each fail the push', async () => {
  const sig = referrer(subject, SIG_TYPE, 'corrupted on the way');
  await pushArtifact(source.host, REPO, sig);
  const corrupting = await relay({
    target: source.host,
    fault: hostile(
      new Map<string, Fault>([
        [`referrers ${image.digest}`, referrersAnswer([descriptorOf(sig)])],
        [`manifest-get ${sig.digest}`, { corrupt: true }],
      ]),
    ),
  });
  const dest = await registry();
  const r = await push(corrupting.host, dest.host);
  expect(r.main.exitCode).toBe(1);
  expect(r.errors.join('\n')).toMatch(new RegExp(`${sig.digest}.*content has digest`));

  // cosign's tag names a signature manifest whose payload layer the source does not have.
  const orphan = referrer(subject, SIG_TYPE, 'payload never uploaded');
  await pushArtifact(source.host, 'elsewhere/app', orphan);
  const missingLayer = JSON.parse(orphan.bytes.toString()) as { layers: Array<{ digest: string }> };
  const tagged = await relay({
    target: source.host,
    fault: hostile(
      new Map([[`manifest-get ${schemaTag(image.digest)}.sig`, manifestAnswer(orphan.bytes, OCI_MANIFEST)]]),
    ),
  });
  const second = await push(tagged.host, dest.host);
  expect(second.main.exitCode).toBe(1);
  expect(second.errors.join('\n')).toContain(missingLayer.layers[0]!.digest);
  // Nothing was tagged at the destination: attachments are read before phase 1.
  const c = client(dest.host);
  expect(await c.headManifest('prod/app', 'latest')).toBeUndefined();
  await c.close();
});

it("a dry run tells that the destination's sha256-<hex> tag holds no index, as the real run then reports it", async () => {
  const sig = referrer(subject, SIG_TYPE, 'for a blocked index');
  await pushArtifact(source.host, REPO, sig);
  const via = await relay({
    target: source.host,
    fault: hostile(new Map([[`referrers ${image.digest}`, referrersAnswer([descriptorOf(sig)])]])),
  });
  const dest = await registry();
  // Someone pushed a plain manifest under the referrers tag.
  const squatter = referrer(subject, 'application/vnd.squatter', 'not an index');
  await pushArtifact(dest.host, 'prod/app', squatter, schemaTag(image.digest));
  const dry = await push(via.host, dest.host, { 'dry-run': 'true' });
  expect(dry.main.exitCode).toBe(0);
  const [plan] = JSON.parse(dry.outputs.plan!) as Array<{ referrersIndexes: object[] }>;
  expect(plan!.referrersIndexes).toEqual([
    { tag: schemaTag(image.digest), before: squatter.digest, add: 1, index: false },
  ]);
  expect(dry.log).toContain(`referrers index ${schemaTag(image.digest)}: holds no image index`);

  const real = await push(via.host, dest.host);
  expect(real.main.exitCode).toBe(1);
  expect(JSON.parse(real.outputs['failed-refs']!)).toEqual([
    { ref: `${dest.host}/prod/app:${schemaTag(image.digest)}`, reason: 'failed (the log says why)' },
  ]);
  const c = client(dest.host);
  expect((await c.headManifest('prod/app', schemaTag(image.digest)))?.digest).toBe(squatter.digest);
  await c.close();
});

it('a referrers endpoint answering 200 with a web page is no referrers API: the tag schema is read instead', async () => {
  const sig = referrer(subject, SIG_TYPE, 'found through the tag schema');
  await pushArtifact(source.host, 'pages/app', sig);
  await publishImage('pages/app');
  await putManifestBytes(
    source.host,
    'pages/app',
    schemaTag(image.digest),
    Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [descriptorOf(sig)] })),
    OCI_INDEX,
  );
  // As a proxy or a web front end does for any path it does not know (oras-go reads it the same way).
  const via = await relay({
    target: source.host,
    fault: ({ kind }) =>
      kind === 'referrers'
        ? { status: 200, headers: { 'content-type': 'text/html' }, body: '<html>Welcome</html>' }
        : undefined,
  });
  const dest = await registry();
  const r = await runAction({
    action: 'push-multi-tag',
    inputs: {
      source: `docker://${via.host}/pages/app@${image.digest}`,
      repositories: `${dest.host}/prod/app`,
      tags: 'latest',
      'tls-verify': 'false',
    },
  });
  expect(r.errors).toEqual([]);
  const c = client(dest.host);
  expect((await c.headManifest('prod/app', sig.digest))?.digest).toBe(sig.digest);
  await c.close();
});

it('a referrer layer larger than its descriptor says is cut off at the declared size', async () => {
  const honest = referrer(subject, SIG_TYPE, 'x'.repeat(64 * 1024));
  await pushArtifact(source.host, REPO, honest);
  const parsed = JSON.parse(honest.bytes.toString()) as { layers: Array<{ size: number }> };
  parsed.layers[0]!.size = 3;
  const bytes = Buffer.from(JSON.stringify(parsed));
  const lying = { digest: sha256(bytes), bytes, mediaType: OCI_MANIFEST };
  const via = await relay({
    target: source.host,
    fault: hostile(
      new Map([
        [`referrers ${image.digest}`, referrersAnswer([descriptorOf(lying)])],
        [`manifest-get ${lying.digest}`, manifestAnswer(bytes, OCI_MANIFEST)],
      ]),
    ),
  });
  const dest = await registry();
  const r = await push(via.host, dest.host);
  expect(r.main.exitCode).toBe(1);
  expect(r.errors.join('\n')).toMatch(/more than the 3 bytes/);
});

it('source manifests whose bytes do not match their digest (the image index, one of its children) fail the push', async () => {
  const multi = generateLayout(join(work, 'multi'), {
    layers: [2_000],
    platforms: [
      { os: 'linux', architecture: 'amd64' },
      { os: 'linux', architecture: 'arm64' },
    ],
  });
  const c = client(source.host);
  const local = await readOciLayout(multi.dir);
  for (const b of local.blobs) {
    await c.uploadBlob('multi/app', { ...b, path: join(multi.dir, 'blobs', 'sha256', b.digest.slice(7)) });
  }
  for (const m of local.manifests) await c.putManifest('multi/app', m.digest, m.bytes, m.mediaType);
  await c.close();
  const dest = await registry();
  for (const corrupted of [multi.digest, multi.children[1]!.digest]) {
    const via = await relay({
      target: source.host,
      fault: ({ kind, reference }) =>
        kind === 'manifest-get' && reference === corrupted ? { corrupt: true } : undefined,
    });
    const r = await runAction({
      action: 'push-multi-tag',
      inputs: {
        source: `docker://${via.host}/multi/app@${multi.digest}`,
        repositories: `${dest.host}/prod/multi`,
        tags: 'latest',
        'tls-verify': 'false',
      },
    });
    expect(r.main.exitCode).toBe(1);
    expect(r.errors.join('\n')).toContain(`cannot read the source docker://${via.host}/multi/app`);
  }
  const d = client(dest.host);
  expect(await d.headManifest('prod/multi', 'latest')).toBeUndefined();
  await d.close();
});

it("a referrer whose artifactType is not a string is copied; its index entry takes the config's media type", async () => {
  const base = referrer(subject, SIG_TYPE, 'typed oddly');
  const parsed = JSON.parse(base.bytes.toString()) as Record<string, unknown>;
  parsed.artifactType = 42;
  const bytes = Buffer.from(JSON.stringify(parsed));
  const odd: Artifact = { ...base, bytes, digest: sha256(bytes) };
  await pushArtifact(source.host, REPO, odd);
  const via = await relay({
    target: source.host,
    fault: hostile(new Map([[`referrers ${image.digest}`, referrersAnswer([descriptorOf(odd)])]])),
  });
  const dest = await registry();
  const r = await push(via.host, dest.host);
  expect(r.errors).toEqual([]);
  const c = client(dest.host);
  const index = await c.getManifest('prod/app', schemaTag(image.digest));
  await c.close();
  const [entry] = (JSON.parse(index.bytes.toString()) as { manifests: Array<Record<string, unknown>> })
    .manifests;
  expect(entry!.digest).toBe(odd.digest);
  // The empty config's media type stands in, as for a manifest without artifactType.
  expect(entry!.artifactType).toBe('application/vnd.oci.empty.v1+json');
});
