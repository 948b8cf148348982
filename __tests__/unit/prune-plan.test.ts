import { describe, expect, it } from '@jest/globals';
import {
  catalogFromDocs,
  detectStyle,
  parseJsonDoc,
  RepoError,
  serializeJson,
  type Catalog,
} from '../../src/actions/prune-simplestreams/catalog.js';
import { planPrune, type PlanOptions } from '../../src/actions/prune-simplestreams/plan.js';
import { globDistance, productMatcher } from '../../src/actions/prune-simplestreams/product-filter.js';
import { normaliseRepoPath } from '../../src/actions/prune-simplestreams/repo-paths.js';
import type { RepoFacts, Times } from '../../src/actions/prune-simplestreams/scan.js';
import { compareC, isClientVersion, versionTimeMs } from '../../src/actions/prune-simplestreams/versions.js';

const NOW = Date.UTC(2024, 5, 1);
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/** Times of an entry written in place `ageMs` ago: its ctime is its mtime. */
const aged = (ageMs: number): Times => ({ mtimeMs: NOW - ageMs, ctimeMs: NOW - ageMs });

type ItemSpec = { path: string; size?: number; ftype?: string; delta_base?: string };
type Spec = Record<string, Record<string, Record<string, ItemSpec>>>;

function catalogOf(spec: Spec, indexProducts = Object.keys(spec)): Catalog {
  const products = Object.fromEntries(
    Object.entries(spec).map(([name, versions]) => [
      name,
      {
        arch: 'amd64',
        x_extra: 'kept',
        versions: Object.fromEntries(
          Object.entries(versions).map(([v, items]) => [
            v,
            {
              x_label: v,
              items: Object.fromEntries(
                Object.entries(items).map(([k, i]) => [k, { ftype: k, size: 10, ...i }]),
              ),
            },
          ]),
        ),
      },
    ]),
  );
  const images = { content_id: 'images', format: 'products:1.0', products };
  const index = {
    format: 'index:1.0',
    index: {
      images: { datatype: 'image-downloads', path: 'streams/v1/images.json', products: indexProducts },
    },
  };
  return catalogFromDocs(
    parseJsonDoc('streams/v1/index.json', JSON.stringify(index), 'index'),
    parseJsonDoc('streams/v1/images.json', JSON.stringify(images), 'products'),
  );
}

/** Every referenced path exists with size 10 and is a week old, except `missing`; `extra` adds unreferenced files. */
function factsOf(catalog: Catalog, extra: Record<string, number> = {}, missing: string[] = []): RepoFacts {
  const facts: RepoFacts = {
    referenced: new Map(),
    files: new Map(),
    dirs: new Map(),
    contentRoots: ['images'],
    metadataLinks: [],
    foreignDirs: [],
  };
  for (const p of catalog.products)
    for (const v of p.versions)
      for (const i of v.items) {
        const exists = !missing.includes(i.path);
        facts.referenced.set(i.path, exists ? { exists, size: 10 } : { exists });
        if (exists) facts.files.set(i.path, { size: 10, ...aged(7 * DAY), regular: true });
      }
  for (const [path, ageMs] of Object.entries(extra))
    facts.files.set(path, { size: 5, ...aged(ageMs), regular: true });
  for (const path of facts.files.keys()) {
    for (let d = path.slice(0, path.lastIndexOf('/')); d.includes('/'); d = d.slice(0, d.lastIndexOf('/'))) {
      facts.dirs.set(d, { times: aged(7 * DAY) });
    }
  }
  return facts;
}

const options = (o: Partial<PlanOptions> = {}): PlanOptions => ({
  keepVersions: 2,
  gracePeriodMs: HOUR,
  products: [],
  keepBroken: false,
  nowMs: NOW,
  ...o,
});

const simple = (versions: string[], prefix = 'images/p'): Spec[string] =>
  Object.fromEntries(
    versions.map((v) => [
      v,
      { 'incus.tar.xz': { path: `${prefix}-${v}.meta` }, squashfs: { path: `${prefix}-${v}.sq` } },
    ]),
  );

describe('version names', () => {
  it('lists only versions that start with a valid YYYYMMDD, as clients do', () => {
    expect(isClientVersion('202401011200')).toBe(true);
    expect(isClientVersion('20240101_12:00')).toBe(true);
    expect(isClientVersion('20240101')).toBe(true);
    expect(isClientVersion('latest')).toBe(false);
    expect(isClientVersion('2024010')).toBe(false);
    expect(isClientVersion('20241301')).toBe(false);
    expect(isClientVersion('20240231')).toBe(false);
    expect(versionTimeMs('20240101_12:30')).toBe(Date.UTC(2024, 0, 1, 12, 30));
    expect(versionTimeMs('202401011230')).toBe(Date.UTC(2024, 0, 1, 12, 30));
  });

  it('orders versions by bytes (C locale), not by locale rules', () => {
    const sorted = ['20240101_12:00', '20240101', '202401011200', '20240101_9:00', '20240101a'].sort(
      compareC,
    );
    expect(sorted).toEqual(['20240101', '202401011200', '20240101_12:00', '20240101_9:00', '20240101a']);
    expect(['b', 'B', 'a'].sort(compareC)).toEqual(['B', 'a', 'b']);
  });
});

describe('path validation', () => {
  it.each([
    ['../../etc/passwd', "leads out of the repository ('..')"],
    ['images/../../x', "leads out of the repository ('..')"],
    ['/..', "leads out of the repository ('..')"],
    ['', 'is empty'],
    ['./', 'names the repository root'],
    ['a\0b', 'contains a NUL byte'],
  ])('refuses %j', (raw, why) => {
    expect(normaliseRepoPath(raw)).toEqual({ error: why });
  });

  it('normalises harmless spellings', () => {
    expect(normaliseRepoPath('./images//a/./b.squashfs')).toEqual({ path: 'images/a/b.squashfs' });
    // As Go's path.Join('/repo', p) resolves them for incus and LXD.
    expect(normaliseRepoPath('/images/a')).toEqual({ path: 'images/a' });
    expect(normaliseRepoPath('images/x/../a/../b')).toEqual({ path: 'images/b' });
  });

  it('refuses the whole catalog when one item path escapes, naming it', () => {
    const spec: Spec = { 'a:b:c:d': { '20240101': { squashfs: { path: '../../etc/passwd' } } } };
    expect(() => catalogOf(spec)).toThrow(RepoError);
    expect(() => catalogOf(spec)).toThrow(
      /item squashfs: path '..\/..\/etc\/passwd' leads out of the repository.*Nothing was changed/s,
    );
  });
});

describe('JSON style', () => {
  it.each([
    ['{"a":1}', '{"a":1,"b":[2]}'],
    ['{\n  "a": 1\n}\n', '{\n  "a": 1,\n  "b": [\n    2\n  ]\n}\n'],
    ['{\n\t"a": 1\n}', '{\n\t"a": 1,\n\t"b": [\n\t\t2\n\t]\n}'],
  ])('keeps the formatting of %j', (original, expected) => {
    expect(serializeJson({ a: 1, b: [2] }, detectStyle(original))).toBe(expected);
  });
});

describe('planPrune: retention', () => {
  it('keeps the newest keep-versions per product in C order and drops the rest', () => {
    const c = catalogOf({ 'a:b:c:d': simple(['20240101_01:00', '20240301_01:00', '20240201_01:00']) });
    const plan = planPrune(c, factsOf(c), new Map(), options());
    expect(plan.products[0]!.kept).toEqual(['20240301_01:00', '20240201_01:00']);
    expect(plan.products[0]!.dropped).toEqual([{ version: '20240101_01:00', reason: 'retention' }]);
    const versions = (plan.images!.products as Record<string, { versions: object; x_extra: string }>)[
      'a:b:c:d'
    ]!;
    expect(Object.keys(versions.versions)).toEqual(['20240301_01:00', '20240201_01:00']);
    expect(versions.x_extra).toBe('kept');
    expect(plan.images!.content_id).toBe('images');
  });

  it('changes nothing when there is nothing to drop (no rewrite, no deletion)', () => {
    const c = catalogOf({ 'a:b:c:d': simple(['20240101', '20240201']) });
    const plan = planPrune(c, factsOf(c), new Map(), options());
    expect(plan.images).toBeUndefined();
    expect(plan.index).toBeUndefined();
    expect(plan.delete).toEqual([]);
    expect(plan.defer).toEqual([]);
  });

  it('drops versions older than max-age but never the newest', () => {
    const c = catalogOf({
      'a:b:c:d': simple(['20230101', '20230201']),
      'e:f:g:h': simple(['20240520', '20240530', '20230101'], 'images/q'),
    });
    const plan = planPrune(c, factsOf(c), new Map(), options({ keepVersions: 5, maxAgeMs: 30 * DAY }));
    expect(plan.products[0]!.kept).toEqual(['20230201']);
    expect(plan.products[0]!.dropped).toEqual([{ version: '20230101', reason: 'max-age' }]);
    expect(plan.products[1]!.kept).toEqual(['20240530', '20240520']);
  });

  it('leaves versions clients never list untouched and does not count them', () => {
    const c = catalogOf({ 'a:b:c:d': simple(['latest', '20240101', '20240201', '20240301']) });
    const plan = planPrune(c, factsOf(c), new Map(), options({ keepVersions: 1 }));
    expect(plan.products[0]!.kept).toEqual(['20240301']);
    expect(plan.products[0]!.ignored).toEqual(['latest']);
    const versions = (plan.images!.products as Record<string, { versions: object }>)['a:b:c:d']!.versions;
    // (JS orders integer-like keys such as 20240301 first: JSON key order is not meaningful to clients.)
    expect(Object.keys(versions).sort()).toEqual(['20240301', 'latest']);
  });

  it('drops broken versions (missing or wrong-sized files) and keeps the newest valid ones', () => {
    const c = catalogOf({ 'a:b:c:d': simple(['20240101', '20240201', '20240301']) });
    const f = factsOf(c, {}, ['images/p-20240301.sq']);
    f.referenced.set('images/p-20240201.meta', { exists: true, size: 9 });
    const plan = planPrune(c, f, new Map(), options());
    expect(plan.products[0]!.kept).toEqual(['20240101']);
    expect(plan.products[0]!.broken.map((b) => b.version)).toEqual(['20240301', '20240201']);
    expect(plan.products[0]!.dropped.every((d) => d.reason === 'broken')).toBe(true);
    const kept = planPrune(c, f, new Map(), options({ keepBroken: true, keepVersions: 3 }));
    expect(kept.products[0]!.kept).toEqual(['20240301', '20240201', '20240101']);
    expect(kept.verifyItems.map((i) => i.path).sort()).toEqual([
      'images/p-20240101.meta',
      'images/p-20240101.sq',
    ]);
  });

  it('removes a product whose every version is broken, and rebuilds the sorted index', () => {
    const c = catalogOf({ 'z:b:c:d': simple(['20240101'], 'images/z'), 'a:b:c:d': simple(['20240101']) }, [
      'z:b:c:d',
      'a:b:c:d',
    ]);
    const plan = planPrune(c, factsOf(c, {}, ['images/z-20240101.sq']), new Map(), options());
    expect(plan.products[0]!.removed).toBe(true);
    expect(Object.keys(plan.images!.products as object)).toEqual(['a:b:c:d']);
    expect((plan.index!.index as { images: { products: string[] } }).images.products).toEqual(['a:b:c:d']);
  });

  it('only touches products matching the filter', () => {
    const c = catalogOf({
      'debian:12:default:amd64': simple(['20240101', '20240201', '20240301']),
      'alpine:3:default:amd64': simple(['20240101', '20240201', '20240301'], 'images/q'),
    });
    const plan = planPrune(c, factsOf(c), new Map(), options({ products: ['debian:*'] }));
    expect(plan.products.map((p) => [p.name, p.selected, p.dropped.length])).toEqual([
      ['debian:12:default:amd64', true, 1],
      ['alpine:3:default:amd64', false, 0],
    ]);
    expect(productMatcher(['*:amd64', 'x?y'])('xzy')).toBe(true);
    expect(productMatcher(['debian:*'])('ubuntu:debian:x')).toBe(false);
  });
});

describe('planPrune: products patterns that match nothing', () => {
  const names = [
    'ubuntu:noble:default:amd64',
    'ubuntu:noble:cloud:amd64',
    'ubuntu:jammy:default:arm64',
    'debian:bookworm:default:amd64',
    'alpine:3.19:default:amd64',
  ];
  const catalog = () =>
    catalogOf(Object.fromEntries(names.map((n, i) => [n, simple(['20240101'], `images/p${i}`)])));

  it('counts edits to the name that make the glob match, wildcards free and a swap as one', () => {
    expect(globDistance('ubnutu:*', 'ubuntu:noble:default:amd64')).toBe(1);
    expect(globDistance('ubuntu:*', 'ubuntu:noble:default:amd64')).toBe(0);
    expect(globDistance('debian:bookwrm:*', 'debian:bookworm:default:amd64')).toBe(1);
    expect(globDistance('alpine:3.2?:*', 'alpine:3.19:default:amd64')).toBe(1);
    expect(globDistance('abc', '')).toBe(3);
    expect(globDistance('*', '')).toBe(0);
  });

  it('reports each pattern that selects nothing with the names it may have meant, and changes nothing', () => {
    const plan = planPrune(
      catalog(),
      factsOf(catalog()),
      new Map(),
      options({
        products: ['ubnutu:*', 'debian:*', 'debain:bookwrm:*:amd64', 'ubuntu:oracular:*', 'zzz', 'u*x'],
      }),
    );
    expect(plan.unmatchedPatterns).toEqual([
      {
        pattern: 'ubnutu:*',
        closest: ['ubuntu:jammy:default:arm64', 'ubuntu:noble:cloud:amd64', 'ubuntu:noble:default:amd64'],
      },
      { pattern: 'debain:bookwrm:*:amd64', closest: ['debian:bookworm:default:amd64'] },
      {
        pattern: 'ubuntu:oracular:*',
        closest: ['ubuntu:jammy:default:arm64', 'ubuntu:noble:cloud:amd64', 'ubuntu:noble:default:amd64'],
      },
      { pattern: 'zzz', closest: [] },
      { pattern: 'u*x', closest: [] },
    ]);
    expect(plan.products.filter((p) => p.selected).map((p) => p.name)).toEqual([
      'debian:bookworm:default:amd64',
    ]);
    expect(planPrune(catalog(), factsOf(catalog()), new Map(), options()).unmatchedPatterns).toEqual([]);
  });
});

describe('planPrune: deltas and shared files', () => {
  it('drops delta items whose base version is gone, keeps the others', () => {
    const versions = simple(['20240101', '20240201', '20240301']);
    versions['20240301']!['squashfs.vcdiff'] = {
      path: 'images/d-0201',
      ftype: 'squashfs.vcdiff',
      delta_base: '20240201',
    };
    versions['20240201']!['squashfs.vcdiff'] = {
      path: 'images/d-0101',
      ftype: 'squashfs.vcdiff',
      delta_base: '20240101',
    };
    const c = catalogOf({ 'a:b:c:d': versions });
    const plan = planPrune(c, factsOf(c), new Map(), options());
    expect(plan.products[0]!.removedItems).toEqual([
      { version: '20240201', item: 'squashfs.vcdiff', reason: 'delta-base-gone' },
    ]);
    expect(plan.defer.map((f) => f.path)).toContain('images/d-0101');
    expect(plan.defer.map((f) => f.path)).not.toContain('images/d-0201');
  });

  it('keeps a file while any item of any product references it (counted by normalised path)', () => {
    const shared = { path: 'images/shared.sq' };
    const c = catalogOf({
      'a:b:c:d': {
        '20240101': { squashfs: shared, 'incus.tar.xz': { path: 'images/a1' } },
        '20240201': {
          squashfs: { path: 'images/a2.sq' },
          'incus.tar.xz': { path: 'images/a2' },
          'lxd.tar.xz': { path: './images//a2' },
        },
      },
      'e:f:g:h': {
        '20240101': { squashfs: { path: 'images/./shared.sq' }, 'incus.tar.xz': { path: 'images/e1' } },
      },
    });
    const plan = planPrune(c, factsOf(c), new Map(), options({ keepVersions: 1, gracePeriodMs: 0 }));
    expect(plan.delete.map((f) => f.path)).toEqual(['images/a1']);
  });
});

describe('planPrune: grace period and state', () => {
  it('defers files that just became unreferenced and records since when', () => {
    const c = catalogOf({ 'a:b:c:d': simple(['20240101', '20240201', '20240301']) });
    const plan = planPrune(c, factsOf(c), new Map(), options());
    expect(plan.delete).toEqual([]);
    expect(plan.defer.map((f) => [f.path, f.deletableAtMs])).toEqual([
      ['images/p-20240101.meta', NOW + HOUR],
      ['images/p-20240101.sq', NOW + HOUR],
    ]);
    expect([...plan.stateAfter]).toEqual([
      ['images/p-20240101.meta', NOW],
      ['images/p-20240101.sq', NOW],
    ]);
    expect(plan.stateDuring).toEqual(plan.stateAfter);
  });

  it('deletes files unreferenced for longer than the grace period, and forgets them', () => {
    const c = catalogOf({ 'a:b:c:d': simple(['20240201', '20240301']) });
    const state = new Map([
      ['images/p-20240101.meta', NOW - 2 * HOUR],
      ['images/p-20240101.sq', NOW - 30 * 60_000],
      ['images/gone', NOW - 9 * HOUR],
    ]);
    const f = factsOf(c, { 'images/p-20240101.meta': 7 * DAY, 'images/p-20240101.sq': 7 * DAY });
    const plan = planPrune(c, f, state, options());
    expect(plan.delete.map((x) => [x.path, x.reason])).toEqual([['images/p-20240101.meta', 'unreferenced']]);
    expect(plan.defer.map((x) => x.path)).toEqual(['images/p-20240101.sq']);
    expect([...plan.stateAfter.keys()]).toEqual(['images/p-20240101.sq']);
    expect([...plan.stateDuring.keys()].sort()).toEqual(['images/p-20240101.meta', 'images/p-20240101.sq']);
  });

  it('judges never-referenced files by when they last changed (uploads in progress survive)', () => {
    const c = catalogOf({ 'a:b:c:d': simple(['20240201']) });
    const plan = planPrune(
      c,
      factsOf(c, { 'images/old-orphan': 2 * HOUR, 'images/uploading': 60_000 }),
      new Map(),
      options(),
    );
    expect(plan.delete.map((x) => [x.path, x.reason])).toEqual([['images/old-orphan', 'orphan']]);
    expect(plan.defer.map((x) => [x.path, x.deletableAtMs])).toEqual([
      ['images/uploading', NOW - 60_000 + HOUR],
    ]);
    expect(plan.stateAfter.size).toBe(0);
  });
});

describe('planPrune: sidecars and directories', () => {
  const nested = (v: string) => ({
    'incus.tar.xz': { path: `images/d/${v}/incus.tar.xz` },
    squashfs: { path: `images/d/${v}/rootfs.squashfs` },
  });

  it('keeps sidecars while their directory has live items and deletes them with the last item', () => {
    const c = catalogOf({ 'a:b:c:d': { '20240301': nested('20240301') } });
    const old = 7 * DAY;
    const f = factsOf(c, {
      'images/d/20240301/SHA256SUMS': old,
      'images/d/20240301/SHA256SUMS.asc': old,
      'images/d/20240301/incus.tar.xz.asc': old,
      'images/d/20240101/incus.tar.xz': old,
      'images/d/20240101/incus.tar.xz.asc': 60_000,
      'images/d/20240101/SHA256SUMS': 60_000,
      'images/d/20240201/rootfs.squashfs': old,
      'images/d/20240201/rootfs.squashfs.asc': old,
      'images/d/20240201/SHA256SUMS': old,
    });
    const state = new Map([['images/d/20240201/rootfs.squashfs', NOW - 10 * 60_000]]);
    const plan = planPrune(c, f, state, options());
    expect(plan.delete.map((x) => [x.path, x.reason])).toEqual([
      ['images/d/20240101/SHA256SUMS', 'sidecar'],
      ['images/d/20240101/incus.tar.xz', 'orphan'],
      ['images/d/20240101/incus.tar.xz.asc', 'sidecar'],
    ]);
    expect(plan.defer.map((x) => [x.path, x.deletableAtMs])).toEqual([
      ['images/d/20240201/SHA256SUMS', NOW + 50 * 60_000],
      ['images/d/20240201/rootfs.squashfs', NOW + 50 * 60_000],
      ['images/d/20240201/rootfs.squashfs.asc', NOW + 50 * 60_000],
    ]);
    expect(plan.dirsToRemove).toEqual(['images/d/20240101']);
  });

  it('counts from ctime when it is later than mtime (rsync -a, cp -p, tar -x: a new copy with an old mtime)', () => {
    const c = catalogOf({ 'a:b:c:d': { '20240301': nested('20240301') } });
    const f = factsOf(c);
    const built = NOW - 3 * DAY;
    const copied = (agoMs: number) => ({ size: 5, mtimeMs: built, ctimeMs: NOW - agoMs, regular: true });
    // Just copied in, not yet in images.json; a stray sidecar beside them; one file unreferenced for 2 h but
    // copied in again 30 min ago (flat layouts name files by content: a publisher may be bringing it back).
    const fresh = ['images/d/20240401/rootfs.squashfs', 'images/d/20240401/SHA256SUMS', 'images/d/x.asc'];
    for (const path of fresh) f.files.set(path, copied(60_000));
    f.files.set('images/d/20240101/incus.tar.xz', copied(30 * 60_000));
    f.dirs.set('images/d/empty-copied', { times: { mtimeMs: built, ctimeMs: NOW - 60_000 } });
    const state = new Map([['images/d/20240101/incus.tar.xz', NOW - 2 * HOUR]]);
    const plan = planPrune(c, f, state, options());
    expect(plan.delete).toEqual([]);
    expect(plan.defer.map((x) => [x.path, x.reason, x.deletableAtMs])).toEqual([
      ['images/d/20240101/incus.tar.xz', 'unreferenced', NOW + 30 * 60_000],
      ['images/d/20240401/SHA256SUMS', 'sidecar', NOW - 60_000 + HOUR],
      ['images/d/20240401/rootfs.squashfs', 'orphan', NOW - 60_000 + HOUR],
      ['images/d/x.asc', 'sidecar', NOW - 60_000 + HOUR],
    ]);
    expect(plan.dirsToRemove).toEqual([]);
  });

  it('removes old empty directories but not fresh ones (a publisher may be about to fill them)', () => {
    const c = catalogOf({ 'a:b:c:d': { '20240301': nested('20240301') } });
    const f = factsOf(c);
    f.dirs.set('images/empty-old', { times: aged(2 * HOUR) });
    f.dirs.set('images/empty-old/sub', { times: aged(2 * HOUR) });
    f.dirs.set('images/empty-new', { times: aged(60_000) });
    expect(planPrune(c, f, new Map(), options()).dirsToRemove).toEqual([
      'images/empty-old/sub',
      'images/empty-old',
    ]);
  });
});
