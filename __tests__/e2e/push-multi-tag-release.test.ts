/**
 * Release semantics against real docker-registry 2.8: two phases with all-or-nothing tags, outputs and summary
 * on every outcome, tag moves shown before → after, and a dry run that changes nothing. Failures are injected
 * by counting relays in front of the registries; every tag is checked on the registry itself.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RegistryClient } from '../../src/core/oci/client.js';
import { runAction } from '../support/harness.js';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { startProxy, type CountingProxy, type ProxyOptions } from '../support/proxy.js';
import { startRegistry, storageFingerprint, type RegistryService } from '../support/registry.js';

let work: string;
let previous: GeneratedLayout;
let release: GeneratedLayout;
let regA: RegistryService;
let regB: RegistryService;
/** The registry of the run whose tag PUT always meets a 503 (the dry run compares regA's storage). */
let regRetry: RegistryService;
let flaky: CountingProxy;
/** That run waits out the client's backoff (~6 s): it starts in beforeAll, beside the other tests. */
let flakyRun: ReturnType<typeof push>;
const relays: CountingProxy[] = [];
const FLAKY_REPO = 'phase2/app';

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'ici-release-'));
  previous = generateLayout(join(work, 'previous'), { layers: [40_000, 20_000] });
  release = generateLayout(join(work, 'release'), { layers: [40_000, 20_000] });
  [regA, regB, regRetry] = await Promise.all([startRegistry(), startRegistry(), startRegistry()]);
  flaky = await relay(regRetry, {
    fault: ({ kind, reference }) =>
      kind === 'manifest-put' && reference === 'broken' ? { status: 503 } : undefined,
  });
  flakyRun = push(release, [flaky.host], FLAKY_REPO, '2.0, broken, latest');
  flakyRun.catch(() => undefined);
});
afterAll(async () => {
  await flakyRun?.catch(() => undefined);
  await Promise.all(relays.splice(0).map((r) => r.stop()));
  await Promise.all([regA?.stop(), regB?.stop(), regRetry?.stop()]);
  rmSync(work, { recursive: true, force: true });
});

async function relay(registry: RegistryService, options: Omit<ProxyOptions, 'target'> = {}) {
  const r = await startProxy({ target: registry.host, ...options });
  relays.push(r);
  return r;
}

/** Where a tag points on the registry itself (not through a relay); undefined when there is no such tag. */
async function tagDigest(registry: RegistryService, repository: string, tag: string) {
  const client = new RegistryClient({ registry: registry.host, insecure: true });
  try {
    return (await client.headManifest(repository, tag))?.digest;
  } finally {
    await client.close();
  }
}

function push(
  layout: GeneratedLayout,
  hosts: string[],
  repository: string,
  tags: string,
  extra: Record<string, string> = {},
) {
  return runAction({
    action: 'push-multi-tag',
    inputs: {
      source: layout.transportRef,
      repositories: hosts.map((h) => `${h}/${repository}`).join('\n'),
      tags,
      'insecure-registries': hosts.join(','),
      ...extra,
    },
  });
}

/** A manifest PUT to a digest (phase 1), as opposed to one to a tag (phase 2). */
const byDigest = (reference: string) => reference.startsWith('sha256:');

describe('atomic (default): a registry failing in phase 1 moves no tag anywhere', () => {
  it('keeps the previous release on the healthy registry and reports every ref with its reason', async () => {
    const repo = 'atomic/app';
    const setup = await push(previous, [regA.host, regB.host], repo, '1.0, latest');
    expect(setup.main.exitCode).toBe(0);

    const healthy = await relay(regA);
    const failing = await relay(regB, {
      fault: ({ kind, method, reference }) =>
        kind === 'manifest-put' && method === 'PUT' && byDigest(reference) ? { status: 400 } : undefined,
    });
    const r = await push(release, [healthy.host, failing.host], repo, '1.1, latest');
    expect(r.main.exitCode).toBe(1);
    // No tag moved on the healthy registry: the new one does not exist, the old one still points at 1.0.
    expect(await tagDigest(regA, repo, '1.1')).toBeUndefined();
    expect(await tagDigest(regA, repo, 'latest')).toBe(previous.digest);
    expect(await tagDigest(regB, repo, 'latest')).toBe(previous.digest);
    expect(healthy.count('manifest-put', (rec) => !byDigest(rec.path.split('/').pop()!))).toBe(0);
    // ...although its phase 1 completed: the release is there by digest, ready for a retry.
    expect(healthy.count('manifest-put', (rec) => rec.status === 201)).toBe(1);

    const error = r.errors.join('\n');
    expect(error).toContain('phase 1 (blobs and manifests by digest) failed on 1 registry; no tag was moved');
    expect(error).toContain(`${failing.host}: PUT manifest ${repo}:${release.digest}: HTTP 400 INJECTED`);
    // Outputs on failure too.
    expect(r.outputs.digest).toBe(release.digest);
    expect(JSON.parse(r.outputs['pushed-refs']!)).toEqual([]);
    const failed = JSON.parse(r.outputs['failed-refs']!) as Array<{ ref: string; reason: string }>;
    expect(failed.map((f) => f.ref).sort()).toEqual(
      [healthy.host, failing.host].flatMap((h) => [`${h}/${repo}:1.1`, `${h}/${repo}:latest`]).sort(),
    );
    expect(failed.find((f) => f.ref === `${healthy.host}/${repo}:latest`)!.reason).toBe(
      `not tagged: phase 1 failed on ${failing.host} (atomic: no tag moves anywhere)`,
    );
    expect(failed.find((f) => f.ref === `${failing.host}/${repo}:latest`)!.reason).toBe(
      'phase 1 failed here: the registry answered HTTP 400 INJECTED',
    );
    expect(r.main.summary).toContain(`phase 1 failed on ${failing.host}, no tag moved anywhere`);
    expect(r.main.summary).toContain(`| ${failing.host} | the registry answered HTTP 400 INJECTED |`);
    expect(r.post?.exitCode).toBe(0);
  });
});

describe('atomic: false keeps per-registry behaviour', () => {
  it('tags the healthy registry and reports the failed one', async () => {
    const repo = 'mirror/app';
    const healthy = await relay(regA);
    const failing = await relay(regB, {
      fault: ({ kind, reference }) =>
        kind === 'manifest-put' && byDigest(reference) ? { status: 400 } : undefined,
    });
    const r = await push(release, [healthy.host, failing.host], repo, '1.1, latest', { atomic: 'false' });
    expect(r.main.exitCode).toBe(1);
    expect(await tagDigest(regA, repo, 'latest')).toBe(release.digest);
    expect(await tagDigest(regB, repo, 'latest')).toBeUndefined();
    expect(JSON.parse(r.outputs['pushed-refs']!)).toEqual([
      `${healthy.host}/${repo}:1.1@${release.digest}`,
      `${healthy.host}/${repo}:latest@${release.digest}`,
    ]);
    expect((JSON.parse(r.outputs['failed-refs']!) as Array<{ ref: string }>).map((f) => f.ref)).toEqual([
      `${failing.host}/${repo}:1.1`,
      `${failing.host}/${repo}:latest`,
    ]);
    expect(r.errors.join('\n')).toContain('the tags of the others were moved');
  });
});

describe('dry-run', () => {
  it('looks only: prints and reports the plan per registry, sets outputs, storage byte-identical', async () => {
    const repo = 'dry/app';
    expect((await push(previous, [regA.host], repo, 'latest')).main.exitCode).toBe(0);
    const before = [storageFingerprint(regA), storageFingerprint(regB)];
    const a = await relay(regA);
    const b = await relay(regB);
    const r = await push(release, [a.host, b.host], repo, '1.1, latest', { 'dry-run': 'true' });
    expect(r.errors).toEqual([]);
    expect(r.main.exitCode).toBe(0);
    expect([storageFingerprint(regA), storageFingerprint(regB)]).toEqual(before);
    for (const relayed of [a, b]) {
      expect(relayed.records.filter((rec) => !['GET', 'HEAD'].includes(rec.method))).toEqual([]);
    }
    expect(r.outputs.digest).toBe(release.digest);
    expect(JSON.parse(r.outputs['pushed-refs']!)).toEqual([]);
    expect(r.outputs['bytes-uploaded']).toBe('0');
    const plan = JSON.parse(r.outputs.plan!) as Array<Record<string, unknown>>;
    const bytes = release.blobBytes;
    expect(plan).toEqual([
      {
        repository: `${a.host}/${repo}`,
        blobs: { upload: 3, uploadBytes: bytes, mount: 0, mountBytes: 0, skip: 0, skipBytes: 0 },
        manifests: { store: 1, present: 0 },
        tags: [
          { tag: '1.1', before: null, after: release.digest },
          { tag: 'latest', before: previous.digest, after: release.digest },
        ],
        referrersApi: null,
        referrersIndexes: [],
      },
      {
        repository: `${b.host}/${repo}`,
        blobs: { upload: 3, uploadBytes: bytes, mount: 0, mountBytes: 0, skip: 0, skipBytes: 0 },
        manifests: { store: 1, present: 0 },
        tags: [
          { tag: '1.1', before: null, after: release.digest },
          { tag: 'latest', before: null, after: release.digest },
        ],
        referrersApi: null,
        referrersIndexes: [],
      },
    ]);
    expect(r.log).toContain(`Dry run: would push ${release.digest}`);
    expect(r.log).toContain(`${a.host}/${repo}:\n  blobs: 3 to upload`);
    expect(r.main.summary).toContain('dry run, nothing changed');
    expect(r.main.summary).toContain('would move');
  });
});

describe('phase 2', () => {
  it('shows each tag move before → after in the summary, from HEAD lookups (never a manifest GET)', async () => {
    const repo = 'moves/app';
    expect((await push(previous, [regA.host], repo, '1, latest')).main.exitCode).toBe(0);
    const watched = await relay(regA);
    const r = await push(release, [watched.host], repo, '2, latest, 1');
    expect(r.main.exitCode).toBe(0);
    const short = (digest: string) => `\`${digest.slice(0, 19)}…\``;
    expect(r.main.summary).toContain(
      `| ${watched.host}/${repo}:latest | ${short(previous.digest)} | ${short(release.digest)} | moved |`,
    );
    expect(r.main.summary).toContain(
      `| ${watched.host}/${repo}:2 | (new) | ${short(release.digest)} | moved |`,
    );
    expect(r.log).toContain(`tag latest: ${previous.digest.slice(0, 19)}… → ${release.digest.slice(0, 19)}…`);
    expect(watched.count('manifest-get')).toBe(0);
    expect(watched.count('manifest-head')).toBeGreaterThanOrEqual(3);
    // Pushed again: nothing moves, no tag PUT is needed.
    watched.reset();
    const again = await push(release, [watched.host], repo, '2, latest, 1');
    expect(again.main.exitCode).toBe(0);
    expect(watched.count('manifest-put')).toBe(0);
    expect(again.main.summary).toContain(
      `| ${watched.host}/${repo}:latest | ${short(release.digest)} | ${short(release.digest)} | unchanged |`,
    );
  });

  // Last in the file: its run started in beforeAll and has had the other tests' time to finish.
  it('a tag PUT that keeps failing is retried, then reported for that ref alone', async () => {
    const repo = FLAKY_REPO;
    const r = await flakyRun;
    expect(r.main.exitCode).toBe(1);
    expect(flaky.count('manifest-put', (rec) => rec.path.endsWith('/broken'))).toBe(6);
    expect(JSON.parse(r.outputs['pushed-refs']!)).toEqual([
      `${flaky.host}/${repo}:2.0@${release.digest}`,
      `${flaky.host}/${repo}:latest@${release.digest}`,
    ]);
    const failed = JSON.parse(r.outputs['failed-refs']!) as Array<{ ref: string; reason: string }>;
    expect(failed).toEqual([
      { ref: `${flaky.host}/${repo}:broken`, reason: 'the registry answered HTTP 503' },
    ]);
    expect(r.errors.join('\n')).toContain(`phase 2 could not set 1 ref(s):\n${flaky.host}/${repo}:broken: `);
    expect(await tagDigest(regRetry, repo, 'latest')).toBe(release.digest);
  });
});
