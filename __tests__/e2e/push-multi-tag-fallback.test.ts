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
import { startProxy, type CountingProxy, type ProxyOptions, type RequestRecord } from '../support/proxy.js';
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

/** What phase 2 sent for one repository: its multi-tag PUTs (`<tags>:<status>`) and the tags PUT one by one. */
interface Phase2 {
  result: Awaited<ReturnType<typeof moveTags>>;
  tagged: string[];
  untagged: string[];
}

/**
 * Pushes to each repository in turn through one relay and one client (so what the registry showed of `?tag=`
 * carries over from one repository to the next, as in one push to several repositories), and returns what
 * phase 2 sent for each.
 */
async function pushThrough(
  options: Omit<ProxyOptions, 'target'>,
  repositories: string[],
  tagList: string[],
): Promise<Phase2[]> {
  const relay = await startProxy({ target: registry.host, ...options });
  relays.push(relay);
  const client = new RegistryClient({ registry: relay.host, insecure: true, retryBaseDelayMs: 10 });
  const content = pushContent(image);
  const phases: Phase2[] = [];
  try {
    for (const repository of repositories) {
      const target = { registry: relay.host, repository, client, scratch: work };
      const plan = planRepository(target, content, tagList, await inspect(target, content, tagList));
      await storeByDigest(target, content, plan, { concurrency: 4, chunkSize: 0 });
      // Phase 2 alone: only tag PUTs are asserted on below.
      relay.reset();
      const result = await moveTags(target, content, plan, { maintainFallback: false });
      const puts = relay.records.filter((r) => r.kind === 'manifest-put');
      phases.push({
        result,
        tagged: puts
          .filter((r) => r.query.has('tag'))
          .map((r) => `${r.query.getAll('tag').length}:${r.status}`),
        untagged: puts
          .filter((r) => !r.query.has('tag'))
          .map((r) => r.path.split('/').pop()!)
          .sort(),
      });
    }
    return phases;
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
    'answered %i: the first repository asks once beside its per-tag PUTs, the next PUTs per tag only',
    async (status) => {
      const repositories = [`refused/s${status}`, `refused/s${status}-next`];
      const [first, next] = await pushThrough({ refuseTagQuery: status }, repositories, tags(12));
      expect(first!.tagged).toEqual([`10:${status}`]);
      expect(first!.untagged).toEqual(tags(12).sort());
      expect(first!.result).toMatchObject({ multiTag: false, tagRequests: 13 });
      expect(next!.tagged).toEqual([]);
      expect(next!.untagged).toEqual(tags(12).sort());
      for (const repository of repositories) await expectTagged(repository, tags(12));
    },
  );

  it('answered 414 whatever the batch: each repository asks with half the tags, down to one, then never', async () => {
    const repositories = Array.from({ length: 6 }, (_, i) => `refused/s414-${i}`);
    const phases = await pushThrough({ refuseTagQuery: 414 }, repositories, tags(12));
    expect(phases.map((p) => p.tagged)).toEqual([['10:414'], ['5:414'], ['3:414'], ['2:414'], ['1:414'], []]);
    for (const p of phases) expect(p.untagged).toEqual(tags(12).sort());
    for (const repository of repositories) await expectTagged(repository, tags(12));
  });

  it('holds no tag back for the answer: the per-tag PUTs go out while the multi-tag PUT is unanswered', async () => {
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let seenWhileHeld = -1;
    const perTag = (r: RequestRecord) => r.kind === 'manifest-put' && !r.path.includes('sha256:');
    const [phase] = await pushThrough(
      {
        refuseTagQuery: 400,
        // The multi-tag PUT is answered once all 4 per-tag PUTs are in, or after 3 s: the old flow, which
        // waited for its answer first, would show 0 here.
        hold: (record) => {
          if (!record.query.has('tag')) {
            if (relays.at(-1)!.records.filter(perTag).length === 4) release();
            return undefined;
          }
          const timer = setTimeout(release, 3000);
          return released.then(() => {
            clearTimeout(timer);
            seenWhileHeld = relays.at(-1)!.records.filter(perTag).length;
          });
        },
      },
      ['held/app'],
      tags(4),
    );
    expect(seenWhileHeld).toBe(4);
    expect(phase!.tagged).toEqual(['4:400']);
    await expectTagged('held/app', tags(4));
  });
});

describe('a registry with the multi-tag PUT (relay doubles)', () => {
  it('capped at 3 tags per request (414 above): halves until it fits, then tags in batches of 3', async () => {
    const repositories = ['capped/a', 'capped/b', 'capped/c', 'capped/d'];
    const phases = await pushThrough({ multiTag: { cap: 3 } }, repositories, tags(12));
    expect(phases.map((p) => p.tagged)).toEqual([
      ['10:414'],
      ['5:414'],
      ['3:201'],
      ['3:201', '3:201', '3:201', '3:201'],
    ]);
    expect(phases.map((p) => p.untagged.length)).toEqual([12, 12, 12, 0]);
    expect(phases[3]!.result).toMatchObject({ multiTag: true, tagRequests: 4 });
    for (const repository of repositories) await expectTagged(repository, tags(12));
  });

  it('23 tags go in batches of at most 10 once the registry confirmed one', async () => {
    const [first, next] = await pushThrough({ multiTag: true }, ['batched/a', 'batched/b'], tags(23));
    expect(first!.tagged).toEqual(['10:201']);
    expect(first!.untagged).toEqual(tags(23).sort());
    expect(next!.tagged).toEqual(['10:201', '10:201', '3:201']);
    expect(next!.untagged).toEqual([]);
    expect(next!.result).toMatchObject({ multiTag: true, tagRequests: 3 });
    await expectTagged('batched/a', tags(23));
    await expectTagged('batched/b', tags(23));
  });

  it.each([
    ['one comma-joined OCI-Tag header', true],
    ['one OCI-Tag header per tag', false],
  ])('confirms tags sent as %s', async (_name, joined) => {
    const repositories = [`confirmed/${joined ? 'joined' : 'repeated'}`, `confirmed/${joined}-next`];
    const [first, next] = await pushThrough({ multiTag: { joined } }, repositories, tags(4));
    expect(first!.tagged).toEqual(['4:201']);
    expect(next!.tagged).toEqual(['4:201']);
    expect(next!.untagged).toEqual([]);
    expect(next!.result).toMatchObject({ multiTag: true, tagRequests: 1 });
    for (const repository of repositories) await expectTagged(repository, tags(4));
  });

  it('a batch that fails for another reason than `?tag=` (403 here) leaves each of its tags to its own PUT', async () => {
    const phases = await pushThrough(
      {
        multiTag: true,
        fault: ({ kind, query, repository }) =>
          kind === 'manifest-put' && query.has('tag') && repository === 'forbidden/b'
            ? { status: 403 }
            : undefined,
      },
      ['forbidden/a', 'forbidden/b'],
      tags(3),
    );
    // The first repository taught the client that the registry confirms `?tag=`: the second sends a batch.
    expect(phases[1]!.tagged).toEqual(['3:403']);
    expect(phases[1]!.untagged).toEqual(tags(3));
    expect(phases[1]!.result.outcomes.filter((o) => o.failure)).toEqual([]);
    await expectTagged('forbidden/b', tags(3));
  });

  it('a tag whose own PUT failed is set when the multi-tag PUT beside it confirmed it', async () => {
    const [phase] = await pushThrough(
      {
        multiTag: true,
        fault: ({ kind, query, reference }) =>
          kind === 'manifest-put' && !query.has('tag') && reference === 't2' ? { status: 403 } : undefined,
      },
      ['confirmed/rescued'],
      tags(3),
    );
    expect(phase!.result.outcomes.filter((o) => o.failure)).toEqual([]);
    await expectTagged('confirmed/rescued', tags(3));
  });
});

describe('a multi-tag PUT that fails (5xx)', () => {
  it('is not retried and says nothing about `?tag=`: each tag stands on its own PUT, the next repository asks again', async () => {
    const repositories = ['broken/a', 'broken/b'];
    const phases = await pushThrough(
      {
        fault: ({ kind, query, reference }) =>
          kind === 'manifest-put' && (query.has('tag') || reference === 't2') ? { status: 500 } : undefined,
      },
      repositories,
      tags(3),
    );
    for (const [i, phase] of phases.entries()) {
      // One try: the per-tag PUTs set the tags meanwhile, and retries would hold phase 2 for their backoff.
      expect(phase.tagged).toEqual(['3:500']);
      expect(phase.result.outcomes.filter((o) => o.failure).map((o) => o.tag)).toEqual(['t2']);
      const direct = new RegistryClient({ registry: registry.host, insecure: true });
      expect(await direct.headManifest(repositories[i]!, 't2')).toBeUndefined();
      await direct.close();
      await expectTagged(repositories[i]!, ['t1', 't3']);
    }
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
