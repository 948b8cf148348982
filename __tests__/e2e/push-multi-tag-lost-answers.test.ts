/**
 * Writes the registry applied whose answer was lost on the way back (the relay forwards the request to a real
 * docker-registry, then cuts the connection or answers a gateway's 502/504 itself): a tag PUT, a manifest PUT
 * by digest, a multi-tag `?tag=` batch, a cross-repository mount, a blob's closing PUT, an upload's first POST.
 * What the registry holds is read directly (not through the relay), and the relay counts every request of each
 * kind: no blob is sent twice, and a write counts as done only when a HEAD finds exactly what was written.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RegistryClient } from '../../src/core/oci/client.js';
import { readOciLayout } from '../../src/core/oci/layout.js';
import { MediaType } from '../../src/core/oci/media-types.js';
import { pushContent, referrersTag, type PushContent } from '../../src/actions/push-multi-tag/content.js';
import { updateFallbackIndex } from '../../src/actions/push-multi-tag/fallback-index.js';
import { inspect, storeByDigest } from '../../src/actions/push-multi-tag/phases.js';
import { planRepository } from '../../src/actions/push-multi-tag/plan.js';
import { tagManifest } from '../../src/actions/push-multi-tag/tagging.js';
import { runAction } from '../support/harness.js';
import { testClient } from '../support/oci-client.js';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { startProxy, type CountingProxy, type ProxyOptions } from '../support/proxy.js';
import { startRegistry, type RegistryService } from '../support/registry.js';

let work: string;
let layout: GeneratedLayout;
let content: PushContent;
let registry: RegistryService;
let relay: CountingProxy;
/** The relay's fault for the test that runs now. */
let fault: ProxyOptions['fault'];
/** Through the relay, with the lines told by onLostAnswer; and straight to the registry. */
let client: RegistryClient;
let direct: RegistryClient;
const told: string[] = [];

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'ici-lost-'));
  layout = generateLayout(join(work, 'layout'), { layers: [300_000, 20_000] });
  content = pushContent(await readOciLayout(layout.dir));
  registry = await startRegistry();
  relay = await startProxy({ target: registry.host, fault: (request) => fault?.(request) });
  client = testClient(relay.host, { onLostAnswer: (line) => told.push(line) });
  direct = testClient(registry.host);
});
afterAll(async () => {
  await Promise.all([client?.close(), direct?.close()]);
  await Promise.all([relay?.stop(), registry?.stop()]);
  rmSync(work, { recursive: true, force: true });
});

function begin(next: ProxyOptions['fault']): void {
  fault = next;
  relay.reset();
  told.length = 0;
}

const targetOf = (repository: string, mountFrom?: string) => ({
  registry: relay.host,
  repository,
  client,
  mountFrom,
  scratch: work,
});

/** Phase 1 for `repository` through the relay (tags planned: none). */
async function store(repository: string, mountFrom?: string, chunkSize = 0) {
  const target = targetOf(repository, mountFrom);
  const plan = planRepository(target, content, [], await inspect(target, content, []));
  return storeByDigest(target, content, plan, { concurrency: 4, chunkSize });
}

const puts = (reference: string) =>
  relay.count('manifest-put', (r) => r.path.endsWith(`/manifests/${reference}`));

describe('a tag PUT whose answer is lost on every try: a HEAD decides', () => {
  it('the registry took it (connection cut after forwarding): the tag counts as set, told in one log line', async () => {
    begin(undefined);
    await store('tagput/cut');
    begin(({ kind, reference }) =>
      kind === 'manifest-put' && reference === 'lost' ? { lostAnswer: 'drop' } : undefined,
    );
    const result = await tagManifest(client, 'tagput/cut', content.root, ['lost', 'fine']);
    expect(result.failed).toEqual(new Map());
    expect([...result.tagged].sort()).toEqual(['fine', 'lost']);
    expect((await direct.headManifest('tagput/cut', 'lost'))?.digest).toBe(content.root.digest);
    // Six tries (the PUT is idempotent: retried), then one HEAD of the tag.
    expect(puts('lost')).toBe(6);
    expect(relay.count('manifest-head', (r) => r.path.endsWith('/manifests/lost'))).toBe(1);
    expect(told).toEqual([
      expect.stringMatching(
        new RegExp(
          `^PUT manifest tagput/cut:lost: .*; but tagput/cut:lost is ${content.root.digest} now \\(HEAD\\): counted as done\\.$`,
        ),
      ),
    ]);
  });

  it('a retry refused as an overwrite (immutable tags) after a try whose answer was cut: the HEAD finds the tag set', async () => {
    begin(undefined);
    await store('tagput/frozen');
    let tries = 0;
    begin(({ kind, reference }) => {
      if (kind !== 'manifest-put' || reference !== 'v1') return undefined;
      if (tries++ === 0) return { lostAnswer: 'drop' };
      // What a registry with tag immutability answers to a PUT of a tag that exists (no forwarding).
      const body = '{"errors":[{"code":"DENIED","message":"the tag v1 is immutable"}]}';
      return { status: 412, body };
    });
    const result = await tagManifest(client, 'tagput/frozen', content.root, ['v1']);
    expect(result.failed).toEqual(new Map());
    expect(result.tagged).toEqual(['v1']);
    expect(puts('v1')).toBe(2);
    expect(told).toEqual([
      expect.stringMatching(/^PUT manifest tagput\/frozen:v1: HTTP 412 DENIED: .*: counted as done\.$/),
    ]);
  });

  it('the HEAD after it answered 503 once: retried, the tag counts as set', async () => {
    begin(undefined);
    await store('tagput/busy');
    let busy = false;
    begin(({ kind, reference }) => {
      if (reference !== 'lost') return undefined;
      if (kind === 'manifest-put') return { lostAnswer: 'drop' };
      if (kind !== 'manifest-head' || busy) return undefined;
      busy = true;
      return { status: 503, retryAfterSeconds: 0 };
    });
    const result = await tagManifest(client, 'tagput/busy', content.root, ['lost']);
    expect(result.failed).toEqual(new Map());
    expect(result.tagged).toEqual(['lost']);
    expect(puts('lost')).toBe(6);
    expect(relay.count('manifest-head', (r) => r.path.endsWith('/manifests/lost'))).toBe(2);
    expect(told).toEqual([
      expect.stringMatching(/; but tagput\/busy:lost is sha256:\w+ now \(HEAD\): counted as done\.$/),
    ]);
  });

  it('no answer within the wait (the registry took it): the tag counts as set', async () => {
    begin(undefined);
    await store('tagput/silent');
    // A 100 ms silence timeout: a manifest PUT waits 5 of them for its answer.
    const impatient = testClient(relay.host, {
      timeoutMs: 100,
      retries: 1,
      onLostAnswer: (line) => told.push(line),
    });
    try {
      begin(({ kind, reference }) =>
        kind === 'manifest-put' && reference === 'slow' ? { answerDelayMs: 1_500 } : undefined,
      );
      const result = await tagManifest(impatient, 'tagput/silent', content.root, ['slow']);
      expect(result.failed).toEqual(new Map());
      expect(result.tagged).toEqual(['slow']);
      expect(puts('slow')).toBe(2);
      expect(told).toEqual([
        expect.stringMatching(
          /^PUT manifest tagput\/silent:slow: no complete answer within 0\.5 s; but .*: counted as done\.$/,
        ),
      ]);
    } finally {
      await impatient.close();
    }
  });

  it('the registry never got it and the tag holds another manifest, or nothing: a failure naming what the HEAD found', async () => {
    begin(undefined);
    await store('tagput/other');
    const other = Buffer.from(
      JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [] }),
    );
    const { digest: otherDigest } = await direct.putManifest(
      'tagput/other',
      'held',
      other,
      MediaType.ociIndex,
    );
    // 502 from the gateway without forwarding: the registry keeps what it had.
    begin(({ kind }) => (kind === 'manifest-put' ? { status: 502, retryAfterSeconds: 0 } : undefined));
    const result = await tagManifest(client, 'tagput/other', content.root, ['held', 'absent']);
    expect(result.tagged).toEqual([]);
    expect(result.failed.get('held')?.detail).toMatch(
      new RegExp(`HTTP 502 .*; a HEAD after it: it is ${otherDigest} there, not ${content.root.digest}\\.$`),
    );
    expect(result.failed.get('held')?.reason).toBe('the registry answered HTTP 502');
    expect(result.failed.get('absent')?.detail).toMatch(
      /; a HEAD after it: the registry has nothing under it\.$/,
    );
    expect((await direct.headManifest('tagput/other', 'held'))?.digest).toBe(otherDigest);
    expect(await direct.headManifest('tagput/other', 'absent')).toBeUndefined();
    expect(told).toEqual([]);
  });
});

describe('a multi-tag `?tag=` batch whose answer is lost, on a registry that confirmed `?tag=` before', () => {
  let batchRelay: CountingProxy;
  let batchClient: RegistryClient;
  const tags = ['b1', 'b2', 'b3'];

  beforeAll(async () => {
    batchRelay = await startProxy({
      target: registry.host,
      multiTag: true,
      fault: (request) => fault?.(request),
    });
    batchClient = testClient(batchRelay.host, { onLostAnswer: (line) => told.push(line) });
  });
  afterAll(async () => {
    await batchClient?.close();
    await batchRelay?.stop();
  });

  /** Phase 1 and a first tagging (which learns that the registry confirms `?tag=`), then the faulted one. */
  async function tagBatch(repository: string, next: ProxyOptions['fault'], meanwhile?: () => Promise<void>) {
    begin(undefined);
    const target = { registry: batchRelay.host, repository, client: batchClient, scratch: work };
    const plan = planRepository(target, content, [], await inspect(target, content, []));
    await storeByDigest(target, content, plan, { concurrency: 4, chunkSize: 0 });
    expect((await tagManifest(batchClient, repository, content.root, ['first'])).tagged).toEqual(['first']);
    await meanwhile?.();
    begin(next);
    batchRelay.reset();
    return tagManifest(batchClient, repository, content.root, tags);
  }
  const batchPuts = () => batchRelay.count('manifest-put', (r) => r.query.has('tag'));
  const tagPuts = () => batchRelay.count('manifest-put', (r) => !r.query.has('tag'));
  const tagHeads = () => batchRelay.count('manifest-head');

  it('cut on every try though the registry set the tags: one HEAD per tag settles it, no per-tag PUT', async () => {
    const result = await tagBatch('batch/cut', ({ kind, query }) =>
      kind === 'manifest-put' && query.has('tag') ? { lostAnswer: 'drop' } : undefined,
    );
    expect(result.failed).toEqual(new Map());
    expect([...result.tagged].sort()).toEqual(tags);
    expect(batchPuts()).toBe(6);
    expect(tagPuts()).toBe(0);
    expect(tagHeads()).toBe(tags.length);
    for (const tag of tags) {
      expect((await direct.headManifest('batch/cut', tag))?.digest).toBe(content.root.digest);
    }
    expect(told).toEqual([
      expect.stringMatching(
        new RegExp(
          `^PUT manifest batch/cut:${content.root.digest}: .*; but batch/cut:b1, b2, b3 are ${content.root.digest} now \\(HEAD\\): counted as done\\.$`,
        ),
      ),
    ]);
  });

  it('a retry refused as an overwrite (immutable tags) after a try whose answer was cut: no false failure', async () => {
    let tries = 0;
    // What a registry with tag immutability answers to any later PUT of a tag that exists (no forwarding).
    const body = '{"errors":[{"code":"DENIED","message":"the tag is immutable"}]}';
    const result = await tagBatch('batch/frozen', ({ kind }) =>
      kind !== 'manifest-put' ? undefined : tries++ === 0 ? { lostAnswer: 'drop' } : { status: 412, body },
    );
    expect(result.failed).toEqual(new Map());
    expect([...result.tagged].sort()).toEqual(tags);
    expect(batchPuts()).toBe(2);
    expect(tagPuts()).toBe(0);
    expect(told).toEqual([expect.stringMatching(/: HTTP 412 DENIED: .*: counted as done\.$/)]);
  });

  it('a settling HEAD answered 503 once: retried, its tag settled too, no per-tag PUT', async () => {
    let busy = false;
    const result = await tagBatch('batch/busy', ({ kind, query, reference }) => {
      if (kind === 'manifest-put' && query.has('tag')) return { lostAnswer: 'drop' };
      if (kind !== 'manifest-head' || reference !== 'b2' || busy) return undefined;
      busy = true;
      return { status: 503, retryAfterSeconds: 0 };
    });
    expect(result.failed).toEqual(new Map());
    expect([...result.tagged].sort()).toEqual(tags);
    expect(batchPuts()).toBe(6);
    expect(tagPuts()).toBe(0);
    expect(tagHeads()).toBe(tags.length + 1);
    expect(told).toEqual([expect.stringMatching(/; but batch\/busy:b1, b2, b3 are sha256:\w+ now \(HEAD\)/)]);
  });

  it('a tag the lost batch set whose first HEAD lags (404), and whose own PUT an immutable registry refuses: HEADed again, no false failure', async () => {
    let lagged = false;
    // What a registry with tag immutability answers to a PUT of a tag that exists (no forwarding).
    const body = '{"errors":[{"code":"DENIED","message":"the tag is immutable"}]}';
    const result = await tagBatch('batch/lag', ({ kind, query, reference }) => {
      if (kind === 'manifest-put') return query.has('tag') ? { lostAnswer: 'drop' } : { status: 412, body };
      if (kind !== 'manifest-head' || reference !== 'b2' || lagged) return undefined;
      // A registry whose reads lag its writes: the HEAD after the batch does not see b2 yet.
      lagged = true;
      return { status: 404, body: '{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}' };
    });
    expect(result.failed).toEqual(new Map());
    expect([...result.tagged].sort()).toEqual(tags);
    expect(batchPuts()).toBe(6);
    expect(
      batchRelay.records
        .filter((r) => r.kind === 'manifest-put' && !r.query.has('tag'))
        .map((r) => r.path.split('/').pop()),
    ).toEqual(['b2']);
    expect(batchRelay.count('manifest-head', (r) => r.path.endsWith('/manifests/b2'))).toBe(2);
    expect(tagHeads()).toBe(tags.length + 1);
    expect(told).toEqual([
      expect.stringMatching(/; but batch\/lag:b1, b3 are sha256:\w+ now \(HEAD\): counted as done\.$/),
      expect.stringMatching(
        /^PUT manifest batch\/lag:b2: HTTP 412 DENIED: .*; but batch\/lag:b2 is sha256:\w+ now \(HEAD\): counted as done\.$/,
      ),
    ]);
  });

  it("a refused tag whose HEADs answer 503 on every try: the HEADs after the refusal's first one get one try each, the refusal stands", async () => {
    const body = '{"errors":[{"code":"DENIED","message":"the tag is immutable"}]}';
    const result = await tagBatch('batch/busyheads', ({ kind, query, reference }) => {
      if (kind === 'manifest-put') return query.has('tag') ? { lostAnswer: 'drop' } : { status: 412, body };
      return kind === 'manifest-head' && reference === 'b2'
        ? { status: 503, retryAfterSeconds: 0 }
        : undefined;
    });
    expect([...result.failed.keys()]).toEqual(['b2']);
    expect(result.failed.get('b2')!.reason).toBe('the registry answered HTTP 412 DENIED');
    expect([...result.tagged].sort()).toEqual(['b1', 'b3']);
    expect(tagPuts()).toBe(1);
    // The batch's settling HEAD and the refusal's first HEAD 6 tries each (the policy's), then 3 lagging HEADs.
    // Before: every lagging HEAD had the policy's 6 tries too (30 HEADs, with Retry-After waits four budgets).
    expect(batchRelay.count('manifest-head', (r) => r.path.endsWith('/manifests/b2'))).toBe(6 + 6 + 3);
  });

  it('the registry applied part of the batch (b1 set, b2 still another manifest, b3 nothing): only b1 is settled by its HEAD', async () => {
    const other = Buffer.from(
      JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [] }),
    );
    let otherDigest = '';
    // What a registry that died half-way through the batch holds; the gateway's 502 never reached it.
    const result = await tagBatch(
      'batch/partial',
      ({ kind, query }) =>
        kind === 'manifest-put' && query.has('tag') ? { status: 502, retryAfterSeconds: 0 } : undefined,
      async () => {
        await direct.putManifest('batch/partial', 'b1', content.root.bytes, content.root.mediaType);
        otherDigest = (await direct.putManifest('batch/partial', 'b2', other, MediaType.ociIndex)).digest;
      },
    );
    expect(result.failed).toEqual(new Map());
    expect([...result.tagged].sort()).toEqual(tags);
    expect(tagHeads()).toBe(tags.length);
    expect(
      batchRelay.records
        .filter((r) => r.kind === 'manifest-put' && !r.query.has('tag'))
        .map((r) => r.path.split('/').pop())
        .sort(),
    ).toEqual(['b2', 'b3']);
    for (const tag of tags) {
      expect((await direct.headManifest('batch/partial', tag))?.digest).toBe(content.root.digest);
    }
    expect(otherDigest).not.toBe(content.root.digest);
    expect(told).toEqual([
      expect.stringMatching(
        /; but batch\/partial:b1 is sha256:[0-9a-f]{64} now \(HEAD\): counted as done\.$/,
      ),
    ]);
  });

  it('a gateway 502 on every try, the registry never reached: the HEADs find no tag, per-tag PUTs set them', async () => {
    const result = await tagBatch('batch/unreached', ({ kind, query }) =>
      kind === 'manifest-put' && query.has('tag') ? { status: 502, retryAfterSeconds: 0 } : undefined,
    );
    expect(result.failed).toEqual(new Map());
    expect([...result.tagged].sort()).toEqual(tags);
    expect(batchPuts()).toBe(6);
    expect(tagHeads()).toBe(tags.length);
    expect(tagPuts()).toBe(tags.length);
    expect(told).toEqual([]);
  });
});

it('the first `?tag=` PUT (support unknown: beside the per-tag PUTs) cut after the registry set its tags, the per-tag PUTs refused as overwrites (immutable tags): a HEAD each, no false failure', async () => {
  begin(undefined);
  await store('probe/frozen');
  const tags = ['p1', 'p2', 'p3'];
  let set!: () => void;
  const tagsSet = new Promise<void>((resolve) => (set = resolve));
  // What a registry with tag immutability answers to a PUT of a tag that exists (no forwarding).
  const body = '{"errors":[{"code":"DENIED","message":"the tag is immutable"}]}';
  const frozen = await startProxy({
    target: registry.host,
    multiTag: true,
    fault: ({ kind, query }) =>
      kind !== 'manifest-put'
        ? undefined
        : query.has('tag')
          ? { lostAnswer: 'drop', meanwhile: async () => set() }
          : { status: 412, body },
    // The per-tag PUTs arrive after the probe set the tags.
    hold: ({ kind, query }) => (kind === 'manifest-put' && !query.has('tag') ? tagsSet : undefined),
  });
  const fresh = testClient(frozen.host, { onLostAnswer: (line) => told.push(line) });
  try {
    const result = await tagManifest(fresh, 'probe/frozen', content.root, tags);
    expect(result.failed).toEqual(new Map());
    expect([...result.tagged].sort()).toEqual(tags);
    expect(frozen.count('manifest-put', (r) => r.query.has('tag'))).toBe(1);
    expect(frozen.count('manifest-put', (r) => !r.query.has('tag'))).toBe(tags.length);
    expect(frozen.count('manifest-head')).toBe(tags.length);
    expect([...told].sort()).toEqual(
      tags.map((tag) =>
        expect.stringMatching(
          new RegExp(
            `^PUT manifest probe/frozen:${tag}: HTTP 412 DENIED: .*; but probe/frozen:${tag} is sha256:\\w+ now \\(HEAD\\): counted as done\\.$`,
          ),
        ),
      ),
    );
  } finally {
    await fresh.close();
    await frozen.stop();
  }
});

it("a referrers index (the tag schema) whose PUT's answer is cut every time: the HEAD finds it, the read-back lists the referrer", async () => {
  begin(undefined);
  await store('referrers/app');
  const tag = referrersTag(content.root.digest);
  const listed = {
    mediaType: content.root.mediaType,
    digest: content.root.digest,
    size: content.root.bytes.length,
  };
  begin(({ kind, reference }) =>
    kind === 'manifest-put' && reference === tag ? { lostAnswer: 'drop' } : undefined,
  );
  const done = await updateFallbackIndex(client, 'referrers/app', tag, [listed]);
  expect(done).toMatchObject({ before: undefined, added: 1 });
  expect(puts(tag)).toBe(6);
  const there = await direct.getManifest('referrers/app', tag);
  expect(there.digest).toBe(done.after);
  expect((JSON.parse(there.bytes.toString('utf8')) as { manifests: unknown[] }).manifests).toEqual([listed]);
  expect(told).toEqual([expect.stringContaining(`; but referrers/app:${tag} is ${done.after} now (HEAD)`)]);
});

it("a referrers index whose PUT's answer is cut while another pipeline's index takes the tag: ours is merged into theirs, both listed", async () => {
  begin(undefined);
  await store('referrers/race');
  // The other pipeline's referrer: a manifest of its own in the same repository (distribution checks that an
  // index's entries exist).
  const other = pushContent(
    await readOciLayout(generateLayout(join(work, 'other-layout'), { layers: [1000] }).dir),
  );
  await storeByDigest(
    targetOf('referrers/race'),
    other,
    planRepository(
      targetOf('referrers/race'),
      other,
      [],
      await inspect(targetOf('referrers/race'), other, []),
    ),
    { concurrency: 2, chunkSize: 0 },
  );
  const tag = referrersTag(content.root.digest);
  const descriptor = (c: PushContent) => ({
    mediaType: c.root.mediaType,
    digest: c.root.digest,
    size: c.root.bytes.length,
  });
  const theirs = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [descriptor(other)] }),
  );
  // Every try of the first round: the registry takes our index, the other pipeline's replaces it, our answer is
  // cut. The HEAD after the last try finds theirs.
  begin(({ kind, reference, index }) =>
    kind === 'manifest-put' && reference === tag && index < 6
      ? {
          lostAnswer: 'drop',
          meanwhile: async () => {
            await direct.putManifest('referrers/race', tag, theirs, MediaType.ociIndex);
          },
        }
      : undefined,
  );
  const done = await updateFallbackIndex(client, 'referrers/race', tag, [descriptor(content)]);
  const there = await direct.getManifest('referrers/race', tag);
  expect(there.digest).toBe(done.after);
  expect((JSON.parse(there.bytes.toString('utf8')) as { manifests: unknown[] }).manifests).toEqual([
    descriptor(other),
    descriptor(content),
  ]);
  // One round whose answers were all lost, then the merge, answered.
  expect(puts(tag)).toBe(7);
});

it('a tag PUT that failed because its token could not be fetched is no lost answer: no HEAD, no second round of token requests', async () => {
  let failing = false;
  const guarded = await startRegistry({
    auth: 'token',
    tokenHook: (req, res) => {
      if (
        !failing ||
        !new URL(req.url!, 'http://t').searchParams.getAll('scope').some((s) => s.endsWith(',push'))
      )
        return false;
      res.writeHead(503, { 'content-type': 'text/plain' }).end('down');
      return true;
    },
  });
  const credentials = { username: guarded.username!, password: guarded.password! };
  const storing = testClient(guarded.host, { credentials });
  const tagging = testClient(guarded.host, { credentials });
  try {
    const target = { registry: guarded.host, repository: 'token/app', client: storing, scratch: work };
    const plan = planRepository(target, content, [], await inspect(target, content, []));
    await storeByDigest(target, content, plan, { concurrency: 4, chunkSize: 0 });
    // A client without a token yet, and a token server that now refuses every push token (pull still works).
    failing = true;
    const before = guarded.tokenRequests.length;
    const result = await tagManifest(tagging, 'token/app', content.root, ['v1']);
    expect(result.failed.get('v1')?.detail).toMatch(/^get a token from .*: HTTP 503/);
    const asked = guarded.tokenRequests.slice(before);
    // The probe's and the PUT's fetch are one (shared): six tries, all for the push token; none for a HEAD.
    expect(asked).toHaveLength(6);
    expect(asked.every((t) => t.scopes.some((scope) => scope.endsWith(',push')))).toBe(true);
  } finally {
    failing = false;
    await Promise.all([storing.close(), tagging.close()]);
    await guarded.stop();
  }
});

describe('phase 1 writes whose answer is lost on every try', () => {
  it('a manifest PUT by digest the registry took counts as stored', async () => {
    begin(({ kind, reference }) =>
      kind === 'manifest-put' && reference === content.root.digest ? { lostAnswer: 'drop' } : undefined,
    );
    const stored = await store('digest/cut');
    expect(stored.uploaded).toBe(content.blobs.length);
    expect(puts(content.root.digest)).toBe(6);
    expect((await direct.headManifest('digest/cut', content.root.digest))?.digest).toBe(content.root.digest);
    expect(told).toEqual([expect.stringContaining(`: counted as done.`)]);
  });

  it('a cross-repository mount the registry made counts as mounted: the blob is not uploaded again', async () => {
    begin(undefined);
    await store('mount/from');
    begin(({ kind }) => (kind === 'mount' ? { lostAnswer: 504, retryAfterSeconds: 0 } : undefined));
    const stored = await store('mount/into', 'mount/from');
    expect(stored).toMatchObject({ uploaded: 0, mounted: content.blobs.length, bytesUploaded: 0 });
    expect(relay.count('mount')).toBe(6 * content.blobs.length);
    expect(relay.count('upload-start') + relay.count('upload-put')).toBe(0);
    for (const blob of content.blobs) expect(await direct.headBlob('mount/into', blob.digest)).toBeDefined();
    expect(told).toHaveLength(content.blobs.length);
    expect(told[0]).toMatch(
      /^mount blob sha256:\w+ from mount\/from into mount\/into: HTTP 504 .*: mounted\.$/,
    );
  });

  it("a blob's closing PUT and an upload's first POST whose answers are lost once: each blob sent once, counted once", async () => {
    const large = content.blobs.reduce((a, b) => (b.size > a.size ? b : a));
    begin(({ kind, index }) =>
      (kind === 'upload-put' || kind === 'upload-start') && index === 0 ? { lostAnswer: 'drop' } : undefined,
    );
    const stored = await store('blob/cut');
    expect(stored.bytesUploaded).toBe(content.blobs.reduce((n, b) => n + b.size, 0));
    // One closing PUT per blob: the one whose answer was lost is not sent again (a HEAD found it there).
    expect(relay.count('upload-put')).toBe(content.blobs.length);
    expect(relay.count('upload-start')).toBe(content.blobs.length + 1);
    const sent = relay.records.filter((r) => r.kind === 'upload-put').reduce((n, r) => n + r.bytesUp, 0);
    expect(sent).toBe(content.blobs.reduce((n, b) => n + b.size, 0));
    expect(await direct.headBlob('blob/cut', large.digest)).toEqual({ size: large.size });
    expect(told).toEqual([
      expect.stringMatching(/^upload blob sha256:\w+ to blob\/cut: .*: not sent again\.$/),
    ]);
  });

  it("a chunked upload's closing PUT (no body) whose answer is cut: its retry finds the session closed, a HEAD finds the blob, nothing is sent again", async () => {
    const large = content.blobs.reduce((a, b) => (b.size > a.size ? b : a));
    let cut = false;
    // The closing PUT after the chunks carries no bytes; cut the first one's answer.
    begin(({ kind, contentLength }) =>
      kind === 'upload-put' && contentLength === 0 && !cut
        ? ((cut = true), { lostAnswer: 'drop' })
        : undefined,
    );
    const stored = await store('blob/chunked', undefined, 100_000);
    expect(stored.uploaded).toBe(content.blobs.length);
    const chunks = relay.records.filter((r) => r.kind === 'upload-chunk');
    expect(chunks.reduce((n, r) => n + r.bytesUp, 0)).toBe(large.size);
    expect(relay.count('upload-start')).toBe(content.blobs.length);
    expect(await direct.headBlob('blob/chunked', large.digest)).toEqual({ size: large.size });
    expect(told).toEqual([
      expect.stringMatching(
        new RegExp(`^upload blob ${large.digest} to blob/chunked: .*: not sent again\\.$`),
      ),
    ]);
  });
});

it('the action: a release tag whose PUT gets a 504 every time though the registry took it is in pushed-refs, told in the log', async () => {
  begin(({ kind, reference }) =>
    kind === 'manifest-put' && reference === 'v2' ? { lostAnswer: 504, retryAfterSeconds: 0 } : undefined,
  );
  const r = await runAction({
    action: 'push-multi-tag',
    inputs: {
      source: layout.transportRef,
      repositories: `${relay.host}/action/app`,
      tags: 'v1, v2',
      'insecure-registries': relay.host,
    },
  });
  expect(r.errors).toEqual([]);
  expect(r.main.exitCode).toBe(0);
  expect(JSON.parse(r.outputs['pushed-refs']!)).toEqual(
    ['v1', 'v2'].map((t) => `${relay.host}/action/app:${t}@${layout.digest}`),
  );
  expect(JSON.parse(r.outputs['failed-refs']!)).toEqual([]);
  expect(r.outputs['bytes-uploaded']).toBe(String(layout.blobs.reduce((n, b) => n + b.size, 0)));
  expect((await direct.headManifest('action/app', 'v2'))?.digest).toBe(layout.digest);
  expect(puts('v2')).toBe(6);
  const settled = r.log.split('\n').filter((line) => line.includes('(HEAD): counted as done.'));
  expect(settled).toEqual([
    expect.stringMatching(
      new RegExp(`PUT manifest action/app:v2: HTTP 504 .*; but action/app:v2 is ${layout.digest} now`),
    ),
  ]);
  // The five retries of the PUT are counted; the HEAD after them is one more request.
  expect(r.log).toMatch(new RegExp(`${relay.host}: \\d+ requests, 5 retried`));
  expect(r.main.summary).toContain(
    `| ${relay.host}/action/app:v2 | (new) | \`${layout.digest.slice(0, 19)}…\` | moved |`,
  );
  expect(r.post?.exitCode).toBe(0);
});
