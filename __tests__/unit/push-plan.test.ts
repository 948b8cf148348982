import { describe, expect, it } from '@jest/globals';
import { referrersTag, type PushContent } from '../../src/actions/push-multi-tag/content.js';
import { gathersEntries, mergeCosign } from '../../src/actions/push-multi-tag/cosign-merge.js';
import { fallbackIndexBytes, missingFrom } from '../../src/actions/push-multi-tag/fallback-index.js';
import type { PushOutcome } from '../../src/actions/push-multi-tag/main.js';
import {
  moveText,
  planJson,
  planLines,
  planRepository,
  type Inspection,
} from '../../src/actions/push-multi-tag/plan.js';
import { referrerDescriptor } from '../../src/actions/push-multi-tag/referrers.js';
import { pushSummary } from '../../src/actions/push-multi-tag/summary.js';
import { readInputs } from '../../src/actions/push-multi-tag/inputs.js';
import { failureOf } from '../../src/actions/push-multi-tag/failure.js';
import { MapInputSource } from '../../src/core/inputs.js';
import { DigestMismatchError } from '../../src/core/oci/digest.js';
import { RegistryError } from '../../src/core/oci/errors.js';
import { TransientError } from '../../src/core/oci/retry.js';

const d = (c: string) => `sha256:${c.repeat(64)}`;
const ROOT = d('a');
const OLD = d('b');

function content(extra: Partial<PushContent> = {}): PushContent {
  const root = {
    digest: ROOT,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    bytes: Buffer.from('{}'),
    isIndex: false,
  };
  return {
    root,
    manifests: [root],
    blobs: [
      { digest: d('1'), size: 1000, path: '/l/1' },
      { digest: d('2'), size: 24, path: '/l/2' },
    ],
    referrers: [],
    artifactTags: [],
    ...extra,
  };
}

const seen = (over: Partial<Inspection> = {}): Inspection => ({
  blobs: new Set([d('2')]),
  manifests: new Set(),
  tags: new Map([['latest', OLD]]),
  fallback: new Map(),
  merges: new Map(),
  ...over,
});

describe('planRepository', () => {
  it('uploads what is missing, skips what is there, and shows each tag before and after', () => {
    const plan = planRepository(
      { registry: 'r.io', repository: 'a/b' },
      content(),
      ['1.2', 'latest'],
      seen(),
    );
    expect(plan.blobs.map((b) => b.action)).toEqual(['upload', 'skip']);
    expect(plan.manifests).toEqual([{ digest: ROOT, store: true }]);
    expect(plan.tags).toEqual([
      { tag: '1.2', before: undefined, after: ROOT },
      { tag: 'latest', before: OLD, after: ROOT },
    ]);
    expect(planLines(plan)).toEqual([
      'r.io/a/b:',
      '  blobs: 1 to upload (1000 B), 0 to mount (0 B), 1 already there (24 B)',
      '  manifests by digest: 1 to store, 0 already there',
      `  tag 1.2: (new) → sha256:aaaaaaaaaaaa…`,
      `  tag latest: sha256:bbbbbbbbbbbb… → sha256:aaaaaaaaaaaa…`,
    ]);
  });

  it('mounts missing blobs from a sibling repository and leaves a tag that is already right alone', () => {
    const plan = planRepository(
      { registry: 'r.io', repository: 'a/c', mountFrom: 'a/b' },
      content(),
      ['latest'],
      seen({ tags: new Map([['latest', ROOT]]), manifests: new Set([ROOT]) }),
    );
    expect(plan.blobs.map((b) => b.action)).toEqual(['mount', 'skip']);
    expect(plan.manifests).toEqual([{ digest: ROOT, store: false }]);
    expect(moveText(plan.tags[0]!)).toBe('latest: sha256:aaaaaaaaaaaa… (unchanged)');
    expect(planJson([plan])).toEqual([
      {
        repository: 'r.io/a/c',
        blobs: { upload: 0, uploadBytes: 0, mount: 1, mountBytes: 1000, skip: 1, skipBytes: 24 },
        manifests: { store: 0, present: 1 },
        tags: [{ tag: 'latest', before: ROOT, after: ROOT }],
        referrersApi: null,
        referrersIndexes: [],
      },
    ]);
  });

  it('lists the referrers index updates where the registry lacks the referrers API', () => {
    const sig = {
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: d('5'),
      size: 10,
      artifactType: 'x/sig',
    };
    const sbom = { ...sig, digest: d('6'), artifactType: 'x/sbom' };
    const c = content({
      referrers: [
        { subject: ROOT, descriptor: sig },
        { subject: ROOT, descriptor: sbom },
      ],
    });
    const plan = planRepository(
      { registry: 'r.io', repository: 'a/b' },
      c,
      ['latest'],
      seen({ referrersApi: false, fallback: new Map([[ROOT, { digest: d('7'), descriptors: [sig] }]]) }),
    );
    expect(plan.fallback).toEqual([
      { subject: ROOT, tag: `sha256-${'a'.repeat(64)}`, before: d('7'), wanted: [sig, sbom], add: 1 },
    ]);
    expect(planLines(plan).at(-1)).toBe(
      `  referrers index sha256-${'a'.repeat(64)}: 1 of 2 referrer(s) to add (now sha256:777777777777…)`,
    );
    const withApi = planRepository(
      { registry: 'r.io', repository: 'a/b' },
      c,
      ['latest'],
      seen({ referrersApi: true }),
    );
    expect(planLines(withApi).at(-1)).toBe('  referrers: the registry indexes them itself (referrers API)');
  });
});

describe('referrers tag schema and index', () => {
  it('names the tag as the distribution-spec does (truncated, invalid characters as -)', () => {
    expect(referrersTag(d('a'))).toBe(`sha256-${'a'.repeat(64)}`);
    expect(referrersTag(`sha512:${'f'.repeat(128)}`)).toBe(`sha512-${'f'.repeat(64)}`);
    expect(
      referrersTag(
        'test+algorithm+using+algorithm+separators+and+lots+of+characters+to+excercise+overall+truncation:alsoSome=InTheEncodedSectionToShowHyphenReplacementAndLotsAndLotsOfCharactersToExcerciseEncodedTruncation',
      ),
    ).toBe(
      'test-algorithm-using-algorithm-s-alsoSome-InTheEncodedSectionToShowHyphenReplacementAndLotsAndLot',
    );
  });

  it('describes a referrer with its artifactType (else the config media type) and annotations', () => {
    const bytes = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.dev.cosign.artifact.sig.v1+json', digest: d('c'), size: 2 },
        layers: [],
        subject: { mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: ROOT, size: 2 },
        annotations: { 'org.opencontainers.image.created': '2026-01-01T00:00:00Z' },
      }),
    );
    expect(
      referrerDescriptor({
        digest: d('9'),
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        bytes,
        isIndex: false,
      }),
    ).toEqual({
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: d('9'),
      size: bytes.length,
      artifactType: 'application/vnd.dev.cosign.artifact.sig.v1+json',
      annotations: { 'org.opencontainers.image.created': '2026-01-01T00:00:00Z' },
    });
  });

  it('adds only descriptors the index lacks, and writes an OCI image index', () => {
    const a = { mediaType: 'm', digest: d('1'), size: 1 };
    const b = { mediaType: 'm', digest: d('2'), size: 1 };
    expect(missingFrom({ descriptors: [a] }, [a, b])).toEqual([b]);
    expect(JSON.parse(fallbackIndexBytes([a]).toString())).toEqual({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [a],
    });
  });
});

describe('failure reasons for outputs and the summary', () => {
  it('keep the status and a well-formed OCI code, never the text a registry chose', () => {
    expect(failureOf(new RegistryError('x: HTTP 403 DENIED: ::add-mask::', 403, 'DENIED'))).toEqual({
      detail: 'x: HTTP 403 DENIED: ::add-mask::',
      reason: 'the registry answered HTTP 403 DENIED',
    });
    expect(failureOf(new RegistryError('y', 400, '::set-output name=a::b')).reason).toBe(
      'the registry answered HTTP 400',
    );
    expect(failureOf(new TransientError('z: socket hang up')).reason).toBe(
      'no usable answer from the registry (network failure or timeout)',
    );
    expect(failureOf(new DigestMismatchError('m', 'sha256:a', 'sha256:b')).reason).toBe(
      'content did not match its digest',
    );
    expect(failureOf(new Error('disk full ::error::')).reason).toBe('failed (the log says why)');
  });
});

describe('push summary', () => {
  const inputs = readInputs(
    new MapInputSource({ source: 'oci:/l', repositories: 'ghcr.io/org/app', tags: '1, latest' }),
  );
  const plan = planRepository(
    { registry: 'ghcr.io', repository: 'org/app' },
    content(),
    ['1', 'latest'],
    seen(),
  );
  const outcome = (over: Partial<PushOutcome>): PushOutcome => ({
    digest: ROOT,
    dryRun: false,
    repositories: [
      {
        registry: 'ghcr.io',
        repository: 'org/app',
        plan,
        stored: {
          uploaded: 1,
          mounted: 0,
          skipped: 1,
          bytesUploaded: 2048,
          subjectIgnored: false,
          mountRefused: false,
        },
      },
    ],
    traffic: [{ registry: 'ghcr.io', requests: 14, retries: 3, bytesUploaded: 2048 }],
    phase1Failures: new Map(),
    refs: [
      { ref: 'ghcr.io/org/app:1', tag: '1', after: ROOT, release: true },
      { ref: 'ghcr.io/org/app:latest', tag: 'latest', before: OLD, after: ROOT, release: true },
    ],
    phase1Ms: 1000,
    phase2Ms: 500,
    ...over,
  });

  it('has a row per repository, a row per tag move (before → after) and one per registry', () => {
    const md = pushSummary(outcome({}), inputs, 1500);
    expect(md).toContain('### push-multi-tag: 1 repositories in 1.5 s: done');
    expect(md).toContain(`| ghcr.io/org/app:1, latest | \`${ROOT}\` | 1 (2.0 KiB) | 0 | 1 |`);
    expect(md).toContain(
      '| ghcr.io/org/app:latest | `sha256:bbbbbbbbbbbb…` | `sha256:aaaaaaaaaaaa…` | moved |',
    );
    expect(md).toContain('| ghcr.io/org/app:1 | (new) | `sha256:aaaaaaaaaaaa…` | moved |');
    expect(md).toContain('| ghcr.io | 14 | 3 | 2.0 KiB |');
    expect(md).toContain('Phase 1 (by digest): 1.0 s; phase 2 (tags): 500 ms.');
  });

  it('names the failed registry and why in its own words (no registry text), and every ref that did not move', () => {
    const hostile = new RegistryError(
      'PUT manifest a/b:sha256:1: HTTP 500 BLOB_UNKNOWN: ![x](http://evil/)',
      500,
      'BLOB_UNKNOWN',
    );
    const md = pushSummary(
      outcome({
        phase1Failures: new Map([['quay.io', failureOf(hostile)]]),
        refs: [
          {
            ref: 'ghcr.io/org/app:latest',
            tag: 'latest',
            before: OLD,
            after: ROOT,
            release: true,
            failure: { detail: 'not tagged', reason: 'not tagged' },
          },
        ],
      }),
      inputs,
      1500,
    );
    expect(md).toContain('phase 1 failed on quay.io, no tag moved anywhere');
    expect(md).toContain('| quay.io | the registry answered HTTP 500 BLOB_UNKNOWN |');
    expect(md).not.toContain('evil');
    expect(md).toContain(
      '| ghcr.io/org/app:latest | `sha256:bbbbbbbbbbbb…` | `sha256:aaaaaaaaaaaa…` | failed: not tagged |',
    );
  });

  it('says a dry run changed nothing and lists the tags that would move', () => {
    const md = pushSummary(
      outcome({
        dryRun: true,
        refs: [],
        repositories: [{ registry: 'ghcr.io', repository: 'org/app', plan }],
      }),
      inputs,
      100,
    );
    expect(md).toContain('dry run, nothing changed');
    expect(md).toContain('would upload 1 (1000 B)');
    expect(md).toContain(
      '| ghcr.io/org/app:latest | `sha256:bbbbbbbbbbbb…` | `sha256:aaaaaaaaaaaa…` | would move |',
    );
  });
});

describe("merging into a destination's cosign tag", () => {
  const layer = (n: string, signature: string) => ({
    mediaType: 'application/vnd.dev.cosign.simplesigning.v1+json',
    digest: d(n),
    size: 10,
    annotations: { 'dev.cosignproject.cosign/signature': signature },
  });
  const sigManifest = (...layers: object[]) =>
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: d('c'), size: 2 },
        layers,
      }),
    );
  const there = {
    bytes: sigManifest(layer('1', 'theirs')),
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
  };
  const config = Buffer.from(JSON.stringify({ rootfs: { type: 'layers', diff_ids: [d('1')] }, os: '' }));
  const source = (bytes: Buffer) => ({ digest: d('9'), mediaType: there.mediaType, bytes, isIndex: false });

  it('adds the entries the destination lacks (a same payload signed by another key is another entry)', () => {
    const merge = mergeCosign(there, config, source(sigManifest(layer('1', 'ours'), layer('1', 'theirs'))));
    expect(merge?.kind).toBe('merged');
    if (merge?.kind !== 'merged') return;
    const parsed = JSON.parse(merge.manifest.bytes.toString()) as {
      layers: object[];
      config: { digest: string };
    };
    expect(parsed.layers).toEqual([layer('1', 'theirs'), layer('1', 'ours')]);
    expect(parsed.config.digest).toBe(merge.config.digest);
    expect(JSON.parse(merge.config.bytes.toString())).toEqual({
      rootfs: { type: 'layers', diff_ids: [d('1'), d('1')] },
      os: '',
    });
  });

  it('leaves a tag holding every entry already, and replaces what it cannot merge into', () => {
    expect(mergeCosign(there, config, source(sigManifest(layer('1', 'theirs'))))).toEqual({
      kind: 'present',
    });
    expect(
      mergeCosign({ ...there, bytes: Buffer.from('{"manifests":[]}') }, config, source(there.bytes)),
    ).toBe(undefined);
    expect(gathersEntries('sha256-ab.sig')).toBe(true);
    expect(gathersEntries('sha256-ab.att')).toBe(true);
    expect(gathersEntries('sha256-ab.sbom')).toBe(false);
  });
});
