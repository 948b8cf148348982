/**
 * The multi-tag PUT sent beside the per-tag PUTs while a registry's `?tag=` support is unknown gets one try.
 * One try is about failures only: the 401 rounds of the auth flow (a first anonymous request, a token the
 * registry stopped taking) are no tries, so the probe still learns from real token-auth and htpasswd
 * docker-registries behind the relay; a 429 with Retry-After, a reset and a TLS registry cost it its one try
 * and no retry is counted. The registries that confirm `?tag=` are the relay's double (docker-registry 2.8
 * ignores it); every tag is checked on the real registry.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RegistryClient, type RegistryClientOptions } from '../../src/core/oci/client.js';
import { readOciLayout, type LocalImage } from '../../src/core/oci/layout.js';
import { pushContent, type PushContent } from '../../src/actions/push-multi-tag/content.js';
import { inspect, storeByDigest } from '../../src/actions/push-multi-tag/phases.js';
import { planRepository } from '../../src/actions/push-multi-tag/plan.js';
import { tagManifest } from '../../src/actions/push-multi-tag/tagging.js';
import { generateLayout } from '../support/oci-layout.js';
import { startProxy, type CountingProxy, type ProxyOptions } from '../support/proxy.js';
import { startRegistry, type RegistryService } from '../support/registry.js';

const TAGS = ['t1', 't2', 't3'];

let work: string;
let image: LocalImage;
let content: PushContent;
const stops: (() => Promise<void>)[] = [];

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'ici-probe-once-'));
  image = await readOciLayout(generateLayout(join(work, 'layout'), { layers: [5_000] }).dir);
  content = pushContent(image);
});
afterAll(async () => {
  for (const stop of stops.splice(0).reverse()) await stop();
  rmSync(work, { recursive: true, force: true });
});

async function registryOf(options: Parameters<typeof startRegistry>[0]): Promise<RegistryService> {
  const registry = await startRegistry(options);
  stops.push(() => registry.stop());
  return registry;
}

async function relayTo(
  registry: RegistryService,
  options: Omit<ProxyOptions, 'target'>,
): Promise<CountingProxy> {
  const relay = await startProxy({ target: registry.host, ...options });
  stops.push(() => relay.stop());
  return relay;
}

function clientFor(registry: RegistryService, host: string, options: Partial<RegistryClientOptions> = {}) {
  const client = new RegistryClient({
    registry: host,
    insecure: !registry.ca,
    credentials: registry.username
      ? { username: registry.username, password: registry.password! }
      : undefined,
    tls: registry.ca ? { certDir: '', ca: [readFileSync(registry.ca.caCert, 'utf8')] } : undefined,
    retryBaseDelayMs: 10,
    ...options,
  });
  stops.push(() => client.close());
  return client;
}

/** Phase 1 (the manifest stored by digest, no tag) through `client`. */
async function storeIn(client: RegistryClient, host: string, repository: string): Promise<void> {
  const target = { registry: host, repository, client, scratch: work };
  const plan = planRepository(target, content, TAGS, await inspect(target, content, TAGS));
  await storeByDigest(target, content, plan, { concurrency: 4, chunkSize: 0 });
}

async function expectTagged(registry: RegistryService, repository: string): Promise<void> {
  const direct = clientFor(registry, registry.host);
  const digests = await Promise.all(TAGS.map((t) => direct.headManifest(repository, t)));
  expect(digests.map((d) => d?.digest)).toEqual(TAGS.map(() => content.root.digest));
}

/** The relay's multi-tag PUTs as `<status>:<authorized>`. */
const multiTagPuts = (relay: CountingProxy) =>
  relay.records
    .filter((r) => r.kind === 'manifest-put' && r.query.has('tag'))
    .map((r) => `${r.status}:${r.authorized ? 'auth' : 'anon'}`);

describe('401 rounds on the one-try multi-tag PUT are answered, not counted as its try', () => {
  it.each(['token', 'htpasswd'] as const)(
    '%s auth, a client that has not logged in yet: the multi-tag PUT is answered with credentials and its confirmation learnt',
    async (auth) => {
      const registry = await registryOf({ auth });
      await storeIn(clientFor(registry, registry.host), registry.host, `${auth}/a`);
      await storeIn(clientFor(registry, registry.host), registry.host, `${auth}/b`);
      const relay = await relayTo(registry, { multiTag: true });
      const client = clientFor(registry, relay.host);
      const first = await tagManifest(client, `${auth}/a`, content.root, TAGS);
      expect(first.failed).toEqual(new Map());
      expect(multiTagPuts(relay)).toEqual(['401:anon', '201:auth']);
      // Learnt: the next repository is tagged by one multi-tag PUT alone.
      relay.reset();
      const next = await tagManifest(client, `${auth}/b`, content.root, TAGS);
      expect(next).toMatchObject({ multiTag: true, requests: 1, failed: new Map() });
      expect(multiTagPuts(relay)).toEqual(['201:auth']);
      expect(client.stats.retries).toBe(0);
      await expectTagged(registry, `${auth}/a`);
      await expectTagged(registry, `${auth}/b`);
    },
  );

  it('token auth, a token the registry stops taking at the multi-tag PUT: a fresh token, the PUT again, confirmation learnt', async () => {
    const registry = await registryOf({ auth: 'token' });
    let refused = 0;
    const relay = await relayTo(registry, {
      multiTag: true,
      fault: ({ kind, query }) =>
        kind === 'manifest-put' && query.has('tag') && refused++ === 0
          ? { status: 401, headers: { 'www-authenticate': registry.challenge! } }
          : undefined,
    });
    const client = clientFor(registry, relay.host);
    await storeIn(client, relay.host, 'expired/a');
    await storeIn(client, relay.host, 'expired/b');
    const tokens = registry.tokenRequests.length;
    relay.reset();
    const first = await tagManifest(client, 'expired/a', content.root, TAGS);
    expect(first.failed).toEqual(new Map());
    expect(multiTagPuts(relay)).toEqual(['401:auth', '201:auth']);
    expect(registry.tokenRequests.length).toBe(tokens + 1);
    relay.reset();
    expect(await tagManifest(client, 'expired/b', content.root, TAGS)).toMatchObject({ multiTag: true });
    expect(client.stats.retries).toBe(0);
    await expectTagged(registry, 'expired/a');
    await expectTagged(registry, 'expired/b');
  });
});

describe('a failed one-try multi-tag PUT: sent once, no retry counted, every tag set by its own PUT', () => {
  it.each<[string, ProxyOptions['fault']]>([
    // An hour's Retry-After: a retry would hold the test past its timeout (capped at 120 s by the policy).
    [
      '429 with Retry-After',
      ({ kind, query }) =>
        kind === 'manifest-put' && query.has('tag') ? { status: 429, retryAfterSeconds: 3600 } : undefined,
    ],
    [
      'a connection reset mid-body',
      ({ kind, query }) => (kind === 'manifest-put' && query.has('tag') ? { drop: 'mid-body' } : undefined),
    ],
  ])('%s', async (_name, fault) => {
    const registry = await registryOf({ auth: 'token' });
    const relay = await relayTo(registry, { multiTag: true, fault });
    const client = clientFor(registry, relay.host);
    for (const repository of ['failed/a', 'failed/b']) {
      await storeIn(client, relay.host, repository);
      const retries = client.stats.retries;
      relay.reset();
      const result = await tagManifest(client, repository, content.root, TAGS);
      expect(result).toMatchObject({ multiTag: false, requests: 4, failed: new Map() });
      expect([...result.tagged].sort()).toEqual(TAGS);
      // Says nothing about `?tag=`: the next repository asks again.
      expect(relay.count('manifest-put', (r) => r.query.has('tag'))).toBe(1);
      expect(client.stats.retries).toBe(retries);
      await expectTagged(registry, repository);
    }
  });
});

it('a TLS registry with htpasswd (docker-registry ignores `?tag=`): one multi-tag PUT, then per tag only', async () => {
  const registry = await registryOf({ auth: 'htpasswd', tls: 'server' });
  const client = clientFor(registry, registry.host);
  for (const repository of ['tls/a', 'tls/b']) {
    await storeIn(client, registry.host, repository);
    const requests = client.stats.requests;
    const result = await tagManifest(client, repository, content.root, TAGS);
    expect(result).toMatchObject({ multiTag: false, failed: new Map() });
    // 4 (the multi-tag PUT beside the per-tag PUTs), then 3 once the registry showed it ignores `?tag=`.
    expect(client.stats.requests - requests).toBe(repository === 'tls/a' ? 4 : 3);
    await expectTagged(registry, repository);
  }
  expect(client.stats.retries).toBe(0);
});

describe('a registry that confirmed `?tag=` once, then answers oddly (the next repository, batches of at most 10)', () => {
  const MANY = Array.from({ length: 12 }, (_, i) => `t${i + 1}`);

  /** Tags `first`, then `next` through one client: the second sees the support the first learnt. */
  async function tagTwice(options: Omit<ProxyOptions, 'target'>, name: string) {
    const registry = await registryOf({});
    const relay = await relayTo(registry, options);
    const client = clientFor(registry, relay.host);
    const [first, next] = [`${name}/first`, `${name}/next`];
    for (const repository of [first, next]) await storeIn(client, relay.host, repository);
    await tagManifest(client, first, content.root, MANY);
    relay.reset();
    const result = await tagManifest(client, next, content.root, MANY);
    const puts = relay.records.filter((r) => r.kind === 'manifest-put');
    const direct = clientFor(registry, registry.host);
    const digests = await Promise.all(MANY.map((t) => direct.headManifest(next, t)));
    expect(digests.map((d) => d?.digest)).toEqual(MANY.map(() => content.root.digest));
    return {
      result,
      batches: puts
        .filter((r) => r.query.has('tag'))
        .map((r) => `${r.query.getAll('tag').length}:${r.status}`),
      perTag: puts.filter((r) => !r.query.has('tag')).length,
    };
  }

  it('confirms only the first tag of each batch: the rest go per tag, each tag once in tagged, requests as sent', async () => {
    const { result, batches, perTag } = await tagTwice(
      { multiTag: { confirm: (asked) => asked.slice(0, 1) } },
      'fewer',
    );
    expect(batches).toEqual(['10:201', '2:201']);
    expect(perTag).toBe(10);
    expect(result).toMatchObject({ multiTag: false, requests: 12, failed: new Map() });
    expect([...result.tagged].sort()).toEqual([...MANY].sort());
  });

  it('confirms only tags it was not asked for: learnt as no support, every tag per tag', async () => {
    const { result, batches, perTag } = await tagTwice(
      { multiTag: { confirm: (asked) => (asked.length === 10 ? ['latest', 'evil'] : asked) } },
      'others',
    );
    // The first repository's multi-tag PUT (10 tags) was "confirmed" with other tags only: no support.
    expect(batches).toEqual([]);
    expect(perTag).toBe(12);
    expect(result).toMatchObject({ multiTag: false, requests: 12, failed: new Map() });
    expect(result.tagged).not.toContain('latest');
  });

  it('answers 414 to every batch from then on: halves down to one tag, then per tag, no loop', async () => {
    const { result, batches, perTag } = await tagTwice(
      {
        multiTag: true,
        fault: ({ kind, query, repository }) =>
          kind === 'manifest-put' && query.has('tag') && repository?.endsWith('/next')
            ? { status: 414 }
            : undefined,
      },
      'uri-too-long',
    );
    expect(batches).toEqual(['10:414', '5:414', '3:414', '2:414', '1:414']);
    expect(perTag).toBe(12);
    expect(result).toMatchObject({ multiTag: false, requests: 17, failed: new Map() });
  });
});
