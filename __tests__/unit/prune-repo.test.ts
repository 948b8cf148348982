/**
 * The whole prune (scan, plan, apply, verify) in-process on real repositories written by the fixture builder:
 * layouts, grace periods over simulated time, dry run, refused paths, and a property test over random repos.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { createHash } from 'node:crypto';
import { basename, join } from 'node:path';
import { loadCatalog } from '../../src/actions/prune-simplestreams/catalog.js';
import type { PruneInputs } from '../../src/actions/prune-simplestreams/inputs.js';
import { planPrune } from '../../src/actions/prune-simplestreams/plan.js';
import { summaryMarkdown } from '../../src/actions/prune-simplestreams/report.js';
import { scanRepository } from '../../src/actions/prune-simplestreams/scan.js';
import { verifyItems } from '../../src/actions/prune-simplestreams/verify.js';
import {
  clockAhead,
  listFiles,
  listItems,
  pruneAt,
  pruneFailure,
  pruneInputs,
  readImages,
  repoProblems,
  SimplestreamsRepo,
  snapshotTree,
  versionsOf,
  type Layout,
} from '../support/simplestreams-fixture.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
// Ahead of the real clock: files the fixture writes age by the mtimes it sets, not their (real) ctime.
const NOW = clockAhead();
const base = mkdtempSync(join(tmpdir(), 'ici-prune-'));
let counter = 0;
afterAll(() => rmSync(base, { recursive: true, force: true }));

function newRepo(layout: Layout, nowMs = NOW): SimplestreamsRepo {
  return new SimplestreamsRepo(join(base, `r${++counter}`), layout, nowMs);
}

const inputs = pruneInputs;
const prune = (i: PruneInputs, nowMs = NOW) => pruneAt(i, nowMs);
const pruneError = (i: PruneInputs) => pruneFailure(i, NOW);

const V = ['20240101_01:00', '20240201_01:00', '20240301_01:00', '20240401_01:00'];

describe('prune on a nested (images.linuxcontainers.org) repository', () => {
  it('drops old versions, defers their files, deletes them after the grace period with sidecars and dirs', async () => {
    const repo = newRepo('nested');
    const p = 'debian:bookworm:default:amd64';
    let previous: string | undefined;
    for (const v of V) {
      repo.addVersion(p, v, { vm: true, sidecars: true, deltaFrom: previous });
      previous = v;
    }
    repo.addVersion('alpine:3.19:default:amd64', V[0]!, { sidecars: true });
    repo.write();
    const imagesBefore = readImages(repo.root);

    const first = await prune(inputs(repo.root));
    expect(versionsOf(repo.root, p)).toEqual([V[2], V[3]]);
    expect(first.report.products.find((x) => x.name === p)!.removedItems).toEqual([
      { version: V[2], item: `delta-${V[1]}.vcdiff`, reason: 'delta-base-gone' },
    ]);
    expect(first.report.totals.removedFiles).toBe(0);
    expect(first.report.totals.removedVersions).toBe(2);
    expect(repoProblems(repo.root)).toEqual([]);
    const after = readImages(repo.root);
    expect(after.x_unknown_top).toEqual(imagesBefore.x_unknown_top);
    expect((after.products as Record<string, { x_vendor_field: number }>)[p]!.x_vendor_field).toBe(42);
    expect(readFileSync(join(repo.root, 'streams/v1/images.json'), 'utf8')).toMatch(/^\{\n {2}"content_id"/);
    const index = JSON.parse(readFileSync(join(repo.root, 'streams/v1/index.json'), 'utf8'));
    expect(index.x_index_extra).toBe(true);
    const oldDir = `images/debian/bookworm/amd64/default/${V[0]}`;
    expect(existsSync(join(repo.root, oldDir, 'rootfs.squashfs'))).toBe(true);
    expect(first.report.files.deferred.map((f) => f.path)).toContain(`${oldDir}/SHA256SUMS.asc`);

    const early = await prune(inputs(repo.root), NOW + 30 * 60_000);
    expect(early.report.totals.removedFiles).toBe(0);

    const later = await prune(inputs(repo.root), NOW + HOUR);
    expect(existsSync(join(repo.root, oldDir))).toBe(false);
    expect(existsSync(join(repo.root, `images/debian/bookworm/amd64/default/${V[1]}`))).toBe(false);
    const deleted = later.report.files.deleted.map((f) => f.path);
    expect(deleted).toContain(`${oldDir}/SHA256SUMS`);
    expect(deleted).toContain(`images/debian/bookworm/amd64/default/${V[2]}/delta-${V[1]}.vcdiff`);
    expect(later.report.totals.freedBytes).toBeGreaterThan(0);
    expect(later.report.files.deferred).toEqual([]);
    expect(
      JSON.parse(readFileSync(join(repo.root, '.image-ci-prune-state.json'), 'utf8')).unreferencedSince,
    ).toEqual({});
    expect(repoProblems(repo.root)).toEqual([]);
    expect(existsSync(join(repo.root, '.image-ci-prune.lock'))).toBe(false);
  });
});

describe('prune on a flat (incus-simplestreams) repository', () => {
  it('keeps shared files, keeps compact JSON compact, and deletes old orphans by mtime only', async () => {
    const repo = newRepo('flat');
    const a = 'ubuntu:noble:default:amd64';
    const b = 'ubuntu:noble:cloud:amd64';
    const shared = repo.addVersion(a, '202401011200').rootfs;
    repo.addVersion(b, '202401011200', { sharedRootfs: shared });
    repo.addVersion(b, '202402011200', { vm: true });
    repo.addVersion(a, '202402011200', { vm: true });
    repo.addVersion(a, '202403011200', { broken: true });
    repo.addOrphan('images/old-upload.squashfs', 2 * HOUR);
    repo.addOrphan('images/new-upload.squashfs', 60_000);
    repo.write({});
    const { report } = await prune(inputs(repo.root, { keepVersions: 1, gracePeriodMs: HOUR }));
    expect(versionsOf(repo.root, a)).toEqual(['202402011200']);
    expect(versionsOf(repo.root, b)).toEqual(['202402011200']);
    expect(report.products.find((x) => x.name === a)!.dropped).toEqual([
      { version: '202403011200', reason: 'broken' },
      { version: '202401011200', reason: 'retention' },
    ]);
    expect(report.files.deleted.map((f) => [f.path, f.reason])).toEqual([
      ['images/old-upload.squashfs', 'orphan'],
    ]);
    expect(report.files.deferred.map((f) => f.path)).toContain('images/new-upload.squashfs');
    expect(report.files.deferred.map((f) => f.path)).toContain(shared);
    expect(readFileSync(join(repo.root, 'streams/v1/images.json'), 'utf8')).toMatch(
      /^\{"content_id":"images"/,
    );
    const index = JSON.parse(readFileSync(join(repo.root, 'streams/v1/index.json'), 'utf8'));
    expect(index.index.images.products).toEqual([b, a]);
    expect(repoProblems(repo.root)).toEqual([]);
  });

  it('does not rewrite metadata that does not change', async () => {
    const repo = newRepo('flat');
    repo.addVersion('a:b:c:d', '202401011200');
    repo.write();
    const before = snapshotTree(repo.root);
    const { report } = await prune(inputs(repo.root));
    expect(report.metadata).toEqual({ imagesJson: 'unchanged', indexJson: 'unchanged' });
    expect(snapshotTree(repo.root)).toEqual(before);
  });
});

describe('leftovers of an interrupted atomic write', () => {
  it('deletes old temp files of images.json, index.json and the state file, keeps fresh ones', async () => {
    const repo = newRepo('flat');
    repo.addVersion('a:b:c:d', '202401011200');
    repo.write();
    for (const [path, age] of [
      ['streams/v1/.images.json.deadbeef.tmp', 2 * HOUR],
      ['streams/v1/.index.json.0123abcd.tmp', 2 * HOUR],
      ['..image-ci-prune-state.json.a1b2c3d4.tmp', 2 * HOUR],
      ['streams/v1/.images.json.feedf00d.tmp', 60_000],
      ['streams/v1/.other.json.deadbeef.tmp', 2 * HOUR],
    ] as const) {
      writeFileSync(join(repo.root, path), '{"partial');
      repo.age(path, age);
    }
    const { report } = await prune(inputs(repo.root));
    expect(report.files.deleted.map((f) => [f.path, f.reason])).toEqual([
      ['..image-ci-prune-state.json.a1b2c3d4.tmp', 'orphan'],
      ['streams/v1/.images.json.deadbeef.tmp', 'orphan'],
      ['streams/v1/.index.json.0123abcd.tmp', 'orphan'],
    ]);
    expect(report.files.deferred.map((f) => f.path)).toEqual(['streams/v1/.images.json.feedf00d.tmp']);
    expect(existsSync(join(repo.root, 'streams/v1/.other.json.deadbeef.tmp'))).toBe(true);
  });
});

describe('verify', () => {
  it('reports a kept file whose content no longer matches its sha256 (same size)', async () => {
    const repo = newRepo('flat');
    const kept = repo.addVersion('a:b:c:d', '202401011200');
    repo.write();
    const rootfs = join(repo.root, kept.rootfs);
    writeFileSync(rootfs, Buffer.alloc(readFileSync(rootfs).length, 0x41));
    const sizeOnly = await prune(inputs(repo.root, { verify: 'size' }));
    expect(sizeOnly.report.verify).toEqual({ mode: 'size', checkedFiles: 2, problems: [] });
    const full = await prune(inputs(repo.root, { verify: 'sha256' }));
    expect(full.report.verify).toEqual({
      mode: 'sha256',
      checkedFiles: 2,
      problems: [
        expect.stringMatching(new RegExp(`^${kept.rootfs} has sha256 [0-9a-f]{64}, expected [0-9a-f]{64}$`)),
      ],
    });
    expect((await prune(inputs(repo.root, { verify: 'none' }))).report.verify).toEqual({
      mode: 'none',
      skipped: 'verify: none',
    });
  });
});

describe('verify of a kept file that cannot be hashed', () => {
  it('lists it as a problem (a FIFO, a directory of the listed size) instead of ending the prune with no report', async () => {
    const root = mkdtempSync(join(base, 'unreadable-'));
    mkdirSync(join(root, 'dir'));
    execFileSync('mkfifo', [join(root, 'fifo')]);
    const items = [
      { name: 'fifo', path: 'fifo', ftype: 'root.tar.xz', sha256: '0'.repeat(64) },
      {
        name: 'dir',
        path: 'dir',
        ftype: 'root.tar.xz',
        size: statSync(join(root, 'dir')).size,
        sha256: '0'.repeat(64),
      },
    ];
    const result = await verifyItems(root, items, 'sha256');
    expect(result.problems).toEqual([
      `fifo cannot be read: cannot read ${join(root, 'fifo')}: not a regular file.`,
      'dir is a directory',
    ]);
  });
});

describe('verify of links by the way they go', () => {
  // Another platform (no /proc/self/fd: the path is resolved, then opened) by overriding process.platform, the
  // only thing core/files asks.
  it.each(['linux', 'darwin'])(
    'judges where a link ends, not its text: the root through a symlink or relative, /proc/self/root, a way out and back, a loop (%s)',
    async (platform) => {
      const real = process.platform;
      Object.defineProperty(process, 'platform', { value: platform });
      try {
        await linkWays();
      } finally {
        Object.defineProperty(process, 'platform', { value: real });
      }
    },
  );

  async function linkWays(): Promise<void> {
    const real = mkdtempSync(join(base, 'ways-'));
    const elsewhere = mkdtempSync(join(base, 'elsewhere-'));
    writeFileSync(join(real, 'b'), 'disk bytes');
    writeFileSync(join(elsewhere, 'c'), 'disk bytes');
    symlinkSync(join(elsewhere, '..', basename(real), 'b'), join(real, 'out-and-back'));
    symlinkSync(join('/proc/self/root', real, 'b'), join(real, 'via-proc'));
    symlinkSync(join('/proc/self/root', elsewhere, 'c'), join(real, 'proc-out'));
    symlinkSync('loop', join(real, 'loop'));
    const alias = join(base, `alias-${++counter}`);
    symlinkSync(real, alias);
    const sha256 = createHash('sha256').update('disk bytes').digest('hex');
    const items = ['b', 'out-and-back', 'via-proc', 'proc-out', 'loop'].map((path) => ({
      name: path,
      path,
      ftype: 'root.tar.xz',
      size: 10,
      sha256,
    }));
    const expected = [
      'proc-out leads out of the repository (a link swapped in?)',
      expect.stringMatching(/^loop cannot be read: .*ELOOP/),
    ];
    expect((await verifyItems(alias, items, 'sha256')).problems).toEqual(expected);
    const cwd = process.cwd();
    process.chdir(base);
    try {
      expect((await verifyItems(basename(alias), items, 'sha256')).problems).toEqual(expected);
    } finally {
      process.chdir(cwd);
    }
  }
});

describe('verify of a kept path that is a directory', () => {
  it('lists it in size mode too, where nothing is read: a directory of the listed size, or a link to one', async () => {
    const root = mkdtempSync(join(base, 'directory-'));
    mkdirSync(join(root, 'pool', 'dir'), { recursive: true });
    symlinkSync('pool/dir', join(root, 'linked'));
    const size = statSync(join(root, 'pool', 'dir')).size;
    const items = ['pool/dir', 'linked'].map((path) => ({ name: path, path, ftype: 'root.tar.xz', size }));
    const result = await verifyItems(root, items, 'size');
    expect(result.problems).toEqual(['pool/dir is a directory', 'linked is a directory']);
  });
});

describe('dry run', () => {
  it('reports the same plan as a real run and changes nothing, not even mtimes, lock or state file', async () => {
    const repo = newRepo('nested');
    for (const v of V) repo.addVersion('a:b:c:d', v, { sidecars: true });
    repo.addOrphan('images/a/b/d/c/orphan', 2 * HOUR);
    repo.writeState({ 'images/a/b/d/c/20231201_01:00/rootfs.squashfs': 2 * HOUR });
    repo.write();
    const before = snapshotTree(repo.root);
    const dry = await prune(inputs(repo.root, { dryRun: true, keepVersions: 1 }));
    expect(snapshotTree(repo.root)).toEqual(before);
    expect(dry.report.dryRun).toBe(true);
    expect(dry.report.metadata.imagesJson).toBe('would be rewritten');
    expect(dry.log.join('\n')).toContain('would delete images/a/b/d/c/orphan');
    const real = await prune(inputs(repo.root, { keepVersions: 1 }));
    expect(real.report.files).toEqual(dry.report.files);
    expect(real.report.products).toEqual(dry.report.products);
  });
});

describe('products patterns that match nothing', () => {
  it('warn with close product names, and the dry-run report and job summary say so', async () => {
    const repo = newRepo('flat');
    for (const v of ['202401011200', '202402011200']) {
      repo.addVersion('ubuntu:noble:default:amd64', v);
      repo.addVersion('debian:bookworm:default:amd64', v);
    }
    repo.write();
    const before = snapshotTree(repo.root);
    const { report, log } = await prune(
      inputs(repo.root, { products: ['ubnutu:*', 'debian:*'], keepVersions: 1, dryRun: true }),
    );
    expect(log).toContain(
      "warning: products: pattern 'ubnutu:*' matches no product in images.json, so it selects nothing; " +
        'close product names: ubuntu:noble:default:amd64',
    );
    expect(report.unmatchedPatterns).toEqual([
      { pattern: 'ubnutu:*', closest: ['ubuntu:noble:default:amd64'] },
    ]);
    expect(report.products.map((p) => p.name)).toEqual(['debian:bookworm:default:amd64']);
    expect(summaryMarkdown(report)).toContain(
      'Warning: `products` pattern `ubnutu:*` matches no product (close names: `ubuntu:noble:default:amd64`).',
    );
    expect(snapshotTree(repo.root)).toEqual(before);
  });
});

describe('item paths as clients resolve them', () => {
  it('takes item paths as incus joins them (a leading / and an inner .. stay inside): their files are kept', async () => {
    const repo = newRepo('flat');
    for (const v of ['202401011200', '202402011200', '202403011200']) repo.addVersion('a:b:c:d', v);
    repo.addOrphan('images/orphan', 7 * DAY);
    type Items = Record<string, { path: string }>;
    const products = repo.images.products as Record<string, { versions: Record<string, { items: Items }> }>;
    const versions = products['a:b:c:d']!.versions;
    const slashed = versions['202401011200']!.items.squashfs!.path;
    const dotted = versions['202402011200']!.items.squashfs!.path;
    // path.Join('/repo', p): what clients fetch is the repository's own file.
    versions['202401011200']!.items.squashfs!.path = `/${slashed}`;
    versions['202402011200']!.items.squashfs!.path = `images/no-such-dir/../${basename(dotted)}`;
    repo.write();
    const { report } = await prune(inputs(repo.root, { keepVersions: 3, gracePeriodMs: 0 }));
    expect(report.files.deleted.map((f) => f.path)).toEqual(['images/orphan']);
    expect(existsSync(join(repo.root, slashed))).toBe(true);
    expect(existsSync(join(repo.root, dotted))).toBe(true);
    expect(existsSync(join(repo.root, 'images/orphan'))).toBe(false);
  });
});

describe('refused repositories (nothing changed)', () => {
  function unsafeRepo(itemPath: string): SimplestreamsRepo {
    const repo = newRepo('flat');
    repo.addVersion('a:b:c:d', '202401011200');
    repo.addVersion('a:b:c:d', '202402011200');
    repo.addVersion('a:b:c:d', '202403011200');
    repo.addOrphan('images/orphan', 7 * DAY);
    type Items = Record<string, { path: string }>;
    const products = repo.images.products as Record<string, { versions: Record<string, { items: Items }> }>;
    products['a:b:c:d']!.versions['202401011200']!.items.squashfs!.path = itemPath;
    repo.write();
    return repo;
  }

  it.each([
    ['../../etc/passwd', /path '..\/..\/etc\/passwd' leads out of the repository \('..'\)/],
    ['images/../../etc/passwd', /path 'images\/..\/..\/etc\/passwd' leads out of the repository/],
  ])('refuses %s', async (itemPath, message) => {
    const repo = unsafeRepo(itemPath);
    const before = snapshotTree(repo.root);
    const error = await pruneError(inputs(repo.root, { keepVersions: 1, gracePeriodMs: 0 }));
    expect(error.message).toMatch(message);
    expect(error.message).toMatch(/Nothing was changed/);
    expect(snapshotTree(repo.root)).toEqual(before);
  });

  it('refuses a symlink that leads out of the repository, and a symlinked directory', async () => {
    const outside = join(base, `outside-${++counter}`);
    mkdirSync(outside);
    writeFileSync(join(outside, 'victim'), 'do not delete');
    for (const link of ['file', 'dir']) {
      const repo = unsafeRepo(link === 'file' ? 'images/evil.squashfs' : 'images/evil-dir/victim');
      symlinkSync(
        link === 'file' ? join(outside, 'victim') : outside,
        join(repo.root, link === 'file' ? 'images/evil.squashfs' : 'images/evil-dir'),
      );
      const before = snapshotTree(repo.root);
      const error = await pruneError(inputs(repo.root, { keepVersions: 1, gracePeriodMs: 0 }));
      expect(error.message).toMatch(/resolves outside the repository \(symlink\)/);
      expect(snapshotTree(repo.root)).toEqual(before);
      expect(readFileSync(join(outside, 'victim'), 'utf8')).toBe('do not delete');
    }
  });

  it('fails clearly on malformed or missing metadata', async () => {
    const repo = unsafeRepo('images/x');
    writeFileSync(join(repo.root, 'streams/v1/images.json'), '{"products": {');
    expect((await pruneError(inputs(repo.root))).message).toMatch(
      /streams\/v1\/images.json is not valid JSON/,
    );
    rmSync(join(repo.root, 'streams/v1/index.json'));
    expect((await pruneError(inputs(repo.root))).message).toMatch(/streams\/v1\/index.json is missing/);
    expect((await pruneError(inputs(join(base, 'nope')))).message).toMatch(/nope does not exist/);
  });
});

describe('symlinks inside the repository never widen what a prune deletes', () => {
  const P = 'debian:bookworm:default:amd64';
  const privateFiles = (repo: SimplestreamsRepo) =>
    [...snapshotTree(repo.root)].filter(([path]) => path.startsWith('private/'));

  /** The reported case: a referenced rootfs is a symlink to private/, which also holds files no index names. */
  function linkedRepo(layout: Layout): { repo: SimplestreamsRepo; link: string } {
    const repo = newRepo(layout);
    const old = repo.addVersion(P, V[0]!);
    repo.addVersion(P, V[1]!);
    repo.moveBehindSymlink(old.rootfs, 'private/rootfs.squashfs');
    repo.addOrphan('private/signing.key', 30 * DAY);
    repo.addOrphan('private/README', 30 * DAY);
    repo.write();
    return { repo, link: old.rootfs };
  }

  it.each(['nested', 'flat'] as const)(
    '%s: the plan looks for orphans only where the layout puts images, never under a link target',
    async (layout) => {
      const { repo } = linkedRepo(layout);
      const catalog = await loadCatalog(repo.root);
      const facts = await scanRepository(repo.root, catalog, []);
      expect(facts.contentRoots).toEqual([
        layout === 'nested' ? 'images/debian/bookworm/amd64/default' : 'images',
      ]);
      expect([...facts.files.keys()].filter((p) => !p.startsWith('images/'))).toEqual([]);
      const plan = planPrune(catalog, facts, new Map(), {
        keepVersions: 1,
        gracePeriodMs: 0,
        products: [],
        keepBroken: false,
        nowMs: NOW,
      });
      const touched = [...plan.delete, ...plan.defer].map((f) => f.path);
      expect(touched.length).toBeGreaterThan(0);
      expect(touched.filter((p) => !p.startsWith('images/'))).toEqual([]);
    },
  );

  it.each(['nested', 'flat'] as const)(
    '%s: private/ survives the default grace period, and the link is later removed as a link',
    async (layout) => {
      const { repo, link } = linkedRepo(layout);
      const before = privateFiles(repo);
      expect(before.map(([p]) => p)).toEqual([
        'private/',
        'private/README',
        'private/rootfs.squashfs',
        'private/signing.key',
      ]);

      const first = await prune(inputs(repo.root, { keepVersions: 2 }));
      expect(first.report.files.deleted).toEqual([]);
      expect(privateFiles(repo)).toEqual(before);
      expect(repoProblems(repo.root)).toEqual([]);

      // The link's version is dropped, then its grace period passes: the link goes, its target stays.
      await prune(inputs(repo.root, { keepVersions: 1 }), NOW + HOUR);
      const later = await prune(inputs(repo.root, { keepVersions: 1 }), NOW + 3 * HOUR);
      expect(later.report.files.deleted.map((f) => f.path)).toContain(link);
      expect(existsSync(join(repo.root, link)) || lstatExists(join(repo.root, link))).toBe(false);
      expect(privateFiles(repo)).toEqual(before);
      expect(repoProblems(repo.root)).toEqual([]);
    },
  );

  it('keeps the target of a referenced symlink inside images/ while the link is referenced', async () => {
    const repo = newRepo('flat');
    const linked = repo.addVersion(P, '202401011200');
    repo.moveBehindSymlink(linked.rootfs, 'images/blobs/rootfs.squashfs');
    repo.write();
    const { report } = await prune(inputs(repo.root, { gracePeriodMs: 0 }));
    expect(report.files.deleted).toEqual([]);
    expect(repoProblems(repo.root)).toEqual([]);
  });

  it('does not walk a product directory reached through a symlinked directory', async () => {
    const repo = newRepo('nested');
    repo.addVersion('evil:r:v:a', V[0]!);
    repo.addVersion('evil:r:v:a', V[1]!);
    repo.moveBehindSymlink('images/evil', 'private/evil');
    repo.addOrphan('private/evil/r/a/v/old-upload.squashfs', 30 * DAY);
    repo.addOrphan('private/signing.key', 30 * DAY);
    repo.write();
    const before = privateFiles(repo);
    const { report } = await prune(inputs(repo.root, { keepVersions: 1, gracePeriodMs: 0 }));
    expect(report.products[0]!.dropped).toEqual([{ version: V[0], reason: 'retention' }]);
    expect(report.files.deleted).toEqual([]);
    expect(privateFiles(repo)).toEqual(before);
    expect(repoProblems(repo.root)).toEqual([]);
  });

  it('removes a symlinked directory and a symlink orphan as links, never following them', async () => {
    const repo = newRepo('nested');
    repo.addVersion(P, V[0]!);
    repo.addOrphan('private/signing.key', 30 * DAY);
    repo.addOrphan('private/keys/old.key', 30 * DAY);
    const productDir = 'images/debian/bookworm/amd64/default';
    repo.symlink(`${productDir}/${V[0]}/keys`, '../../../../../../private/keys', 30 * DAY);
    repo.symlink(`${productDir}/stale.squashfs`, '../../../../../private/signing.key', 30 * DAY);
    repo.write();
    const before = privateFiles(repo);
    const { report } = await prune(inputs(repo.root));
    expect(report.files.deleted.map((f) => f.path)).toEqual([
      `${productDir}/${V[0]}/keys`,
      `${productDir}/stale.squashfs`,
    ]);
    expect(lstatExists(join(repo.root, `${productDir}/stale.squashfs`))).toBe(false);
    expect(privateFiles(repo)).toEqual(before);
    expect(repoProblems(repo.root)).toEqual([]);
  });
});

function lstatExists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** mulberry32: a tiny seeded PRNG so a failing case can be replayed from its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Generated {
  repo: SimplestreamsRepo;
  /** product -> dated versions that are not broken */
  valid: Map<string, string[]>;
}

function randomRepo(seed: number): Generated {
  const rand = prng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const repo = newRepo(rand() < 0.5 ? 'flat' : 'nested');
  const valid = new Map<string, string[]>();
  const shareable: string[] = [];
  const productCount = 1 + Math.floor(rand() * 4);
  for (let p = 0; p < productCount; p++) {
    const product = `os${p}:r${Math.floor(rand() * 3)}:${pick(['default', 'cloud'])}:${pick(['amd64', 'arm64'])}`;
    if (valid.has(product)) continue;
    valid.set(product, []);
    const versions = new Set<string>();
    const count = 1 + Math.floor(rand() * 8);
    while (versions.size < count) {
      const day = String(1 + Math.floor(rand() * 28)).padStart(2, '0');
      const month = String(1 + Math.floor(rand() * 5)).padStart(2, '0');
      versions.add(
        repo.layout === 'flat' ? `2024${month}${day}1200` : `2024${month}${day}_${pick(['01', '13'])}:00`,
      );
    }
    if (rand() < 0.2) versions.add('latest-build');
    let previous: string | undefined;
    for (const version of [...versions].sort()) {
      // A version clients never list is left as it is, broken or not; only dated versions break here.
      const broken = rand() < 0.15 && version !== 'latest-build';
      const share = !broken && shareable.length > 0 && rand() < 0.2 ? pick(shareable) : undefined;
      const written = repo.addVersion(product, version, {
        vm: rand() < 0.4,
        deltaFrom: previous && rand() < 0.5 ? previous : undefined,
        sharedRootfs: share,
        broken,
        sidecars: rand() < 0.5,
        ageMs: Math.floor(rand() * 10 * DAY),
      });
      if (!broken) {
        if (!share) shareable.push(written.rootfs);
        if (version !== 'latest-build') valid.get(product)!.push(version);
      }
      previous = version;
    }
  }
  for (let o = Math.floor(rand() * 4); o > 0; o--) {
    repo.addOrphan(`images/orphan-${o}${pick(['', '.asc'])}`, Math.floor(rand() * 3 * HOUR));
  }
  repo.write(rand() < 0.5 ? { indent: 2 } : {});
  return { repo, valid };
}

describe('property: random repositories', () => {
  const seeds = Array.from({ length: 60 }, (_, i) => 1000 + i);
  it.each(seeds)(
    'seed %i: valid after prune, newest N kept, nothing referenced deleted, re-run is a no-op',
    async (seed) => {
      const { repo, valid } = randomRepo(seed);
      const keepVersions = 1 + (seed % 3);
      const gracePeriodMs = seed % 4 === 0 ? 0 : HOUR;
      const referencedBefore = new Set(listItems(repo.root).map((i) => i.path));
      const filesBefore = listFiles(repo.root);

      const { report } = await prune(inputs(repo.root, { keepVersions, gracePeriodMs }));
      expect(repoProblems(repo.root)).toEqual([]);
      expect(report.verify).toEqual(expect.objectContaining({ problems: [] }));
      for (const [product, versions] of valid) {
        const newest = [...versions]
          .sort((x, y) => Buffer.compare(Buffer.from(y), Buffer.from(x)))
          .slice(0, keepVersions);
        const listed = versionsOf(repo.root, product).filter((v) => v !== 'latest-build');
        expect(listed).toEqual([...newest].sort());
      }
      const filesAfter = new Set(listFiles(repo.root));
      const deleted = filesBefore.filter((f) => !filesAfter.has(f));
      expect(deleted.sort()).toEqual(report.files.deleted.map((f) => f.path).sort());
      for (const item of listItems(repo.root)) expect(filesAfter.has(item.path)).toBe(true);
      if (gracePeriodMs > 0) for (const f of deleted) expect(referencedBefore.has(f)).toBe(false);

      const snapshot = snapshotTree(repo.root);
      const again = await prune(inputs(repo.root, { keepVersions, gracePeriodMs }));
      expect(again.report.totals).toEqual({
        removedVersions: 0,
        removedFiles: 0,
        deferredFiles: report.totals.deferredFiles,
        freedBytes: 0,
      });
      expect(snapshotTree(repo.root)).toEqual(snapshot);

      const later = await prune(inputs(repo.root, { keepVersions, gracePeriodMs }), NOW + 4 * HOUR);
      expect(later.report.files.deferred).toEqual([]);
      expect(repoProblems(repo.root)).toEqual([]);
      for (const item of listItems(repo.root)) expect(existsSync(join(repo.root, item.path))).toBe(true);
    },
  );
});

describe('verify of a kept file swapped for a link after the scan', () => {
  it("reports a link out of the repository without the outside file's size or sha256; a link within it (a pool) verifies", async () => {
    const root = mkdtempSync(join(base, 'swapped-'));
    const outside = mkdtempSync(join(base, 'outside-'));
    const secret = 'root:$6$not-for-the-log:19000:0:99999:7:::\n';
    writeFileSync(join(outside, 'shadow'), secret);
    mkdirSync(join(root, 'pool'));
    writeFileSync(join(root, 'pool', 'disk'), 'disk bytes');
    symlinkSync('pool/disk', join(root, 'pooled'));
    symlinkSync(join(outside, 'shadow'), join(root, 'swapped'));
    // Relative, through the pool dir and back out: resolved, not judged by its text.
    symlinkSync('../' + join('..', basename(outside), 'shadow'), join(root, 'pool', 'sneaky'));
    const sha = (text: string) => createHash('sha256').update(text).digest('hex');
    const item = (path: string, content: string) => ({
      name: path,
      path,
      ftype: 'root.tar.xz',
      size: Buffer.byteLength(content) + 1,
      sha256: sha(content),
    });
    const result = await verifyItems(
      root,
      [item('pooled', 'disk bytes'), item('swapped', 'other'), item('pool/sneaky', 'other')],
      'sha256',
    );
    expect(result.problems).toEqual([
      'pooled has 10 bytes, expected 11',
      'swapped leads out of the repository (a link swapped in?)',
      'pool/sneaky leads out of the repository (a link swapped in?)',
    ]);
    const exact = await verifyItems(root, [{ ...item('pooled', 'disk bytes'), size: 10 }], 'sha256');
    expect(exact.problems).toEqual([]);
    const report = JSON.stringify(result);
    expect(report).not.toContain(sha(secret));
    expect(report).not.toContain(`has ${Buffer.byteLength(secret)} bytes`);
  });
});
