/**
 * Tagging where the OCI 1.1 multi-tag PUT (`?tag=`) is refused, capped or answered in either OCI-Tag form.
 * docker-registry 2.8 ignores `?tag=`, so the registries that refuse it (400/404/405/414/431), cap it (414
 * above N tags, as zot does above 46) or confirm it are relay doubles in front of the real registry; every tag
 * is then checked on the real registry itself.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RegistryClient } from '../../src/core/oci/client.js';
import { readOciLayout, type LocalImage } from '../../src/core/oci/layout.js';
import { pushContent } from '../../src/actions/push-multi-tag/content.js';
import { inspect, moveTags, storeByDigest } from '../../src/actions/push-multi-tag/phases.js';
import { planRepository } from '../../src/actions/push-multi-tag/plan.js';
import { runAction } from '../support/harness.js';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { startProxy, type CountingProxy, type ProxyOptions } from '../support/proxy.js';
import { startRegistry, type RegistryService } from '../support/registry.js';

const tags = (n: number) => Array.from({ length: n }, (_, i) => `t${i + 1}`);

let work: string;
let layout: GeneratedLayout;
let image: LocalImage;
let registry: RegistryService;
const relays: CountingProxy[] = [];

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'ici-multitag-'));
  layout = generateLayout(join(work, 'layout'), { layers: [20_000] });
  image = await readOciLayout(layout.dir);
  registry = await startRegistry();
});
afterAll(async () => {
  await Promise.all(relays.splice(0).map((r) => r.stop()));
  await registry.stop();
  rmSync(work, { recursive: true, force: true });
});

async function pushThrough(options: Omit<ProxyOptions, 'target'>, repository: string, tagList: string[]) {
  const relay = await startProxy({ target: registry.host, ...options });
  relays.push(relay);
  const client = new RegistryClient({ registry: relay.host, insecure: true, retryBaseDelayMs: 10 });
  try {
    const content = pushContent(image);
    const target = { registry: relay.host, repository, client };
    const plan = planRepository(target, content, tagList, await inspect(target, content, tagList));
    await storeByDigest(target, content, plan, { concurrency: 4, chunkSize: 0 });
    // Phase 2 alone: only tag PUTs are asserted on below.
    relay.reset();
    const result = await moveTags(target, content, plan, { maintainFallback: false });
    const puts = relay.records.filter((r) => r.kind === 'manifest-put');
    return {
      result,
      tagged: puts
        .filter((r) => r.query.has('tag'))
        .map((r) => `${r.query.getAll('tag').length}:${r.status}`),
      untagged: puts.filter((r) => !r.query.has('tag')).map((r) => r.path.split('/').pop()),
    };
  } finally {
    await client.close();
  }
}

/** Every tag, read from the real registry (not through a relay). */
async function expectTagged(repository: string, tagList: string[]): Promise<void> {
  const direct = new RegistryClient({ registry: registry.host, insecure: true });
  const digests = await Promise.all(tagList.map((t) => direct.headManifest(repository, t)));
  expect(new Set(digests.map((d) => d?.digest))).toEqual(new Set([layout.digest]));
  await direct.close();
}

describe('a registry that refuses `?tag=` (relay doubles)', () => {
  it.each([400, 404, 405, 431])(
    'answered %i: phase 2 PUTs once per tag (the manifest is stored by digest in phase 1)',
    async (status) => {
      const repository = `refused/s${status}`;
      const { result, tagged, untagged } = await pushThrough(
        { refuseTagQuery: status },
        repository,
        tags(12),
      );
      expect(tagged).toEqual([`10:${status}`]);
      expect(untagged.sort()).toEqual(tags(12).sort());
      expect(result.multiTag).toBe(false);
      await expectTagged(repository, tags(12));
    },
  );

  it('answered 414 whatever the batch: halves down to one tag, then PUTs per tag', async () => {
    const { tagged, untagged } = await pushThrough({ refuseTagQuery: 414 }, 'refused/s414', tags(12));
    expect(tagged).toEqual(['10:414', '5:414', '3:414', '2:414', '1:414']);
    expect(untagged.sort()).toEqual(tags(12).sort());
    await expectTagged('refused/s414', tags(12));
  });
});

describe('a registry with the multi-tag PUT (relay doubles)', () => {
  it('capped at 3 tags per request (414 above): the batch halves until it fits, every tag confirmed', async () => {
    const { result, tagged, untagged } = await pushThrough({ multiTag: { cap: 3 } }, 'capped/app', tags(12));
    expect(tagged).toEqual(['10:414', '5:414', '3:201', '3:201', '3:201', '3:201']);
    expect(untagged).toEqual([]);
    expect(result).toMatchObject({ multiTag: true, tagRequests: 6 });
    await expectTagged('capped/app', tags(12));
  });

  it('23 tags go in batches of at most 10', async () => {
    const { result, tagged, untagged } = await pushThrough({ multiTag: true }, 'batched/app', tags(23));
    expect(tagged).toEqual(['10:201', '10:201', '3:201']);
    expect(untagged).toEqual([]);
    expect(result.multiTag).toBe(true);
    await expectTagged('batched/app', tags(23));
  });

  it.each([
    ['one comma-joined OCI-Tag header', true],
    ['one OCI-Tag header per tag', false],
  ])('confirms tags sent as %s', async (_name, joined) => {
    const repository = `confirmed/${joined ? 'joined' : 'repeated'}`;
    const { result, tagged, untagged } = await pushThrough({ multiTag: { joined } }, repository, tags(4));
    expect(tagged).toEqual(['4:201']);
    expect(untagged).toEqual([]);
    expect(result).toMatchObject({ multiTag: true, tagRequests: 1 });
  });
});

it('push-multi-tag (dist) through a registry answering 400 to `?tag=` exits 0 with every tag created', async () => {
  const relay = await startProxy({ target: registry.host, refuseTagQuery: 400 });
  relays.push(relay);
  const r = await runAction({
    action: 'push-multi-tag',
    inputs: {
      source: layout.transportRef,
      repositories: `${relay.host}/action/one\n${relay.host}/action/two`,
      tags: tags(3).join(','),
      'insecure-registries': relay.host,
    },
  });
  expect(r.errors).toEqual([]);
  expect(r.main.exitCode).toBe(0);
  // Phase 2 tags both repositories at once: each tries `?tag=` at most once, then goes per tag.
  expect(relay.count('manifest-put', (rec) => rec.query.has('tag'))).toBeLessThanOrEqual(2);
  expect(relay.count('manifest-put', (rec) => !rec.query.has('tag'))).toBe(2 + 2 * 3);
  await expectTagged('action/one', tags(3));
  await expectTagged('action/two', tags(3));
});
