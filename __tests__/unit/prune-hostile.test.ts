/**
 * Hostile repositories for the whole prune (scan, plan, apply) in-process: metadata that a Go client (incus,
 * LXD: encoding/json) reads differently from JSON.parse, metadata that lives where the layout keeps images,
 * symlinks on the way to a referenced file, and names that try to break the summary or the log; and a hostile
 * world: someone who may write in the repository (a publisher's account) changing it between the scan and the
 * deletions, metadata, state and lock files whose text error messages quote.
 */
import { afterAll, describe, expect, it, jest } from '@jest/globals';
import {
  chmodSync,
  cpSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { execFileSync } from 'node:child_process';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { CliHost } from '../../src/core/host.js';
import { MapInputSource } from '../../src/core/inputs.js';
import { duplicateKeys, unescapeUrlPath } from '../../src/actions/prune-simplestreams/catalog.js';
import { main } from '../../src/actions/prune-simplestreams/main.js';
import { pruneRepository } from '../../src/actions/prune-simplestreams/prune.js';
import type { PruneInputs } from '../../src/actions/prune-simplestreams/inputs.js';
import { summaryMarkdown, type PruneReport } from '../../src/actions/prune-simplestreams/report.js';
import { versionTimeMs } from '../../src/actions/prune-simplestreams/versions.js';
import {
  applyAfter as applyAfterPlan,
  clockAhead,
  pruneAt,
  pruneFailure,
  pruneInputs,
  repoProblems,
  SimplestreamsRepo,
  snapshotTree,
  versionsOf,
} from '../support/simplestreams-fixture.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
// Ahead of the real clock: files the fixture writes age by the mtimes it sets, not their (real) ctime.
const NOW = clockAhead();
const P = 'debian:bookworm:default:amd64';
const V = ['20240101_01:00', '20240201_01:00', '20240301_01:00', '20240401_01:00'];
const base = mkdtempSync(join(tmpdir(), 'ici-prune-hostile-'));
let counter = 0;
afterAll(() => rmSync(base, { recursive: true, force: true }));

function newRepo(layout: 'flat' | 'nested'): SimplestreamsRepo {
  return new SimplestreamsRepo(join(base, `r${++counter}`), layout, NOW);
}

const inputs = (path: string, o: Partial<PruneInputs> = {}) =>
  pruneInputs(path, { keepVersions: 1, gracePeriodMs: 0, verify: 'size', ...o });
const prune = (i: PruneInputs, nowMs = NOW) => pruneAt(i, nowMs);
const pruneError = (i: PruneInputs) => pruneFailure(i, NOW);

const imagesJson = (repo: SimplestreamsRepo) => join(repo.root, 'streams/v1/images.json');

describe('symlinks on the way to a referenced file', () => {
  it('keeps an old symlinked directory that a referenced path goes through', async () => {
    const repo = newRepo('flat');
    const v = repo.addVersion(P, V[0]!);
    repo.addVersion(P, V[1]!);
    // images/pool -> images/blobs (a deduplicating publisher); images.json names the file through the link.
    mkdirSync(join(repo.root, 'images/blobs'));
    renameSync(join(repo.root, v.rootfs), join(repo.root, 'images/blobs/rootfs.squashfs'));
    repo.symlink('images/pool', 'blobs', 30 * DAY);
    type Items = Record<string, { path: string }>;
    const products = repo.images.products as Record<string, { versions: Record<string, { items: Items }> }>;
    products[P]!.versions[V[0]!]!.items.squashfs!.path = 'images/pool/rootfs.squashfs';
    repo.write();
    const { report } = await prune(inputs(repo.root, { keepVersions: 2 }));
    expect(report.files.deleted.map((f) => f.path)).toEqual([]);
    expect(lstatSync(join(repo.root, 'images/pool')).isSymbolicLink()).toBe(true);
    expect(repoProblems(repo.root)).toEqual([]);
  });

  it('keeps every link of a chain of symlinks that a referenced path resolves through', async () => {
    const repo = newRepo('flat');
    const v = repo.addVersion(P, V[0]!);
    repo.addVersion(P, V[1]!);
    // images.json names v.rootfs -> images/hop.squashfs -> images/blobs/rootfs.squashfs.
    repo.moveBehindSymlink(v.rootfs, 'images/blobs/rootfs.squashfs');
    rmSync(join(repo.root, v.rootfs));
    repo.symlink(v.rootfs, 'hop.squashfs', 30 * DAY);
    repo.symlink('images/hop.squashfs', 'blobs/rootfs.squashfs', 30 * DAY);
    repo.write();
    const { report } = await prune(inputs(repo.root, { keepVersions: 2 }));
    expect(report.files.deleted.map((f) => f.path)).toEqual([]);
    expect(repoProblems(repo.root)).toEqual([]);
  });

  it('keeps the hops of a chain whose absolute link spells the repository by another path (/var/www/x -> /srv/x)', async () => {
    const repo = newRepo('flat');
    const v = repo.addVersion(P, V[0]!);
    repo.addVersion(P, V[1]!);
    // The web server's path to the repository is a symlink to it; the publisher wrote absolute links by that path.
    const alias = join(base, `alias-${counter}`);
    symlinkSync(repo.root, alias);
    repo.moveBehindSymlink(v.rootfs, 'images/blobs/rootfs.squashfs');
    rmSync(join(repo.root, v.rootfs));
    repo.symlink(v.rootfs, join(alias, 'images/hop.squashfs'), 30 * DAY);
    repo.symlink('images/hop.squashfs', 'blobs/rootfs.squashfs', 30 * DAY);
    repo.write();
    for (const path of [repo.root, alias]) {
      const { report } = await prune(inputs(path, { keepVersions: 2 }));
      expect(report.files.deleted.map((f) => f.path)).toEqual([]);
      expect(repoProblems(repo.root)).toEqual([]);
    }
  });
});

describe('the metadata files themselves', () => {
  it('never deletes an images.json that index.json keeps inside a content directory', async () => {
    const repo = newRepo('flat');
    repo.addVersion(P, V[0]!);
    repo.write();
    const index = JSON.parse(readFileSync(join(repo.root, 'streams/v1/index.json'), 'utf8'));
    index.index.images.path = 'images/catalog.json';
    writeFileSync(join(repo.root, 'streams/v1/index.json'), JSON.stringify(index));
    renameSync(imagesJson(repo), join(repo.root, 'images/catalog.json'));
    repo.age('images/catalog.json', 30 * DAY);
    const { report } = await prune(inputs(repo.root));
    expect(report.files.deleted.map((f) => f.path)).toEqual([]);
    expect(existsSync(join(repo.root, 'images/catalog.json'))).toBe(true);
  });

  it('never deletes the links images.json resolves through under images/ (a symlinked directory, a hop)', async () => {
    const repo = newRepo('flat');
    const dropped = repo.addVersion(P, V[0]!);
    repo.addVersion(P, V[1]!);
    repo.write();
    // streams/v1/images.json -> images/current/images.json, images/current -> meta-2024 (a directory),
    // images/meta-2024/images.json -> catalog.json: a publisher that switches metadata by one link.
    mkdirSync(join(repo.root, 'images/meta-2024'));
    renameSync(imagesJson(repo), join(repo.root, 'images/meta-2024/catalog.json'));
    repo.age('images/meta-2024/catalog.json', 30 * DAY);
    repo.symlink('images/meta-2024/images.json', 'catalog.json', 30 * DAY);
    repo.symlink('images/current', 'meta-2024', 30 * DAY);
    repo.symlink('streams/v1/images.json', '../../images/current/images.json', 30 * DAY);
    const { report } = await prune(inputs(repo.root));
    expect(report.files.deleted.map((f) => f.path)).toEqual([...dropped.paths].sort());
    expect(repoProblems(repo.root)).toEqual([]);
    expect(lstatSync(imagesJson(repo)).isSymbolicLink()).toBe(true);
  });

  it('refuses metadata that a symlinked streams/ keeps outside the repository, writing nothing there', async () => {
    const repo = newRepo('flat');
    repo.addVersion(P, V[0]!);
    repo.addVersion(P, V[1]!);
    repo.write();
    const outside = join(base, `outside-${++counter}`);
    renameSync(join(repo.root, 'streams'), outside);
    symlinkSync(outside, join(repo.root, 'streams'));
    const before = snapshotTree(outside);
    const error = await pruneError(inputs(repo.root));
    expect(error.message).toMatch(/streams\/v1\/index\.json resolves outside the repository/);
    expect(snapshotTree(outside)).toEqual(before);
  });

  it('rewrites a metadata file that is a symlink inside the repository at its target, keeping the link', async () => {
    const repo = newRepo('flat');
    repo.addVersion(P, V[0]!);
    repo.addVersion(P, V[1]!);
    repo.write();
    renameSync(imagesJson(repo), join(repo.root, 'streams/v1/images-2024.json'));
    symlinkSync('images-2024.json', imagesJson(repo));
    await prune(inputs(repo.root, { gracePeriodMs: HOUR }));
    expect(lstatSync(imagesJson(repo)).isSymbolicLink()).toBe(true);
    expect(Object.keys(JSON.parse(readFileSync(imagesJson(repo), 'utf8')).products[P].versions)).toEqual([
      V[1],
    ]);
    expect(repoProblems(repo.root)).toEqual([]);
  });
});

describe('metadata or state that is a FIFO (opening one waits for a writer, for ever)', () => {
  it.each(['streams/v1/images.json', '.image-ci-prune-state.json'])(
    '%s: refused, nothing changed',
    async (path) => {
      const repo = newRepo('flat');
      repo.addVersion(P, V[0]!);
      repo.write();
      rmSync(join(repo.root, path), { force: true });
      execFileSync('mkfifo', [join(repo.root, path)]);
      // Not snapshotTree: reading the FIFO to compare it would wait for ever too.
      const names = () => readdirSync(repo.root, { recursive: true }).sort();
      const before = names();
      const error = await pruneError(inputs(repo.root));
      expect(error.message).toContain(`${path} is not a regular file`);
      expect(names()).toEqual(before);
      expect(lstatSync(join(repo.root, path)).isFIFO()).toBe(true);
    },
  );
});

describe('metadata a Go client reads differently from JSON.parse', () => {
  /** The repository's images.json text with `edit` applied to it (raw text: JSON.stringify cannot write these). */
  function editedRepo(edit: (text: string) => string): SimplestreamsRepo {
    const repo = newRepo('nested');
    for (const v of V) repo.addVersion(P, v);
    repo.write();
    writeFileSync(imagesJson(repo), edit(readFileSync(imagesJson(repo), 'utf8')));
    return repo;
  }

  it('keeps numbers of unknown fields JSON.parse cannot hold (a 64-bit build id, 1e400) as written', async () => {
    // Go reads them exactly (json.Number, uint64); a double would round the id and turn 1e400 into null.
    const raw = ['18446744073709551615', '1e400', '0.30000000000000000000001', '-9007199254740993'];
    const repo = editedRepo((text) =>
      text.replace('"x_vendor_field": 42', `"x_vendor_field": [${raw.join(', ')}, 1.50, 7]`),
    );
    await prune(inputs(repo.root));
    const text = readFileSync(imagesJson(repo), 'utf8');
    expect(Object.keys(JSON.parse(text).products[P].versions)).toEqual([V[3]]);
    expect(text).toContain(
      `"x_vendor_field": [\n        ${[...raw, '1.5', '7'].join(',\n        ')}\n      ]`,
    );
  });

  it('keeps the sign of a negative zero (-0, -0.0e3) when it rewrites images.json', async () => {
    // A double holds -0, but JSON.stringify writes it as 0; Go reads -0 as negative zero (math.Signbit) and
    // writes it back as -0, so a publisher's tool would see the value changed by a prune that never reads it.
    const repo = editedRepo((text) =>
      text.replace('"x_vendor_field": 42', '"x_vendor_field": [-0, -0.0e3, 0, 0.0, -1]'),
    );
    await prune(inputs(repo.root));
    const text = readFileSync(imagesJson(repo), 'utf8');
    expect(Object.keys(JSON.parse(text).products[P].versions)).toEqual([V[3]]);
    expect(text).toContain(
      '"x_vendor_field": [\n        -0,\n        -0.0e3,\n        0,\n        0,\n        -1\n      ]',
    );
  });

  it('refuses duplicate "versions" keys (encoding/json merges them), changing nothing', async () => {
    // Split the product's versions over two "versions" keys: incus sees all four, JSON.parse only the last two.
    const repo = editedRepo((text) => {
      const images = JSON.parse(text);
      const versions = images.products[P].versions;
      const first = JSON.stringify({ [V[0]!]: versions[V[0]!], [V[1]!]: versions[V[1]!] });
      const second = JSON.stringify({ [V[2]!]: versions[V[2]!], [V[3]!]: versions[V[3]!] });
      images.products[P].versions = '@@VERSIONS@@';
      return JSON.stringify(images).replace('"@@VERSIONS@@"', `${first}, "versions": ${second}`);
    });
    const before = snapshotTree(repo.root);
    const error = await pruneError(inputs(repo.root));
    expect(error.message).toMatch(`duplicate key "products.${P}.versions"`);
    expect(error.message).toMatch(/Nothing was changed/);
    expect(snapshotTree(repo.root)).toEqual(before);
  });

  it('refuses a field spelled in another case (encoding/json matches names case-insensitively)', async () => {
    const repo = editedRepo((text) =>
      text.replace(
        /"path": "(images\/[^"]*\/20240401_01:00\/rootfs.squashfs)"/,
        '"path": "$1", "PATH": "x/y"',
      ),
    );
    const before = snapshotTree(repo.root);
    const error = await pruneError(inputs(repo.root));
    expect(error.message).toMatch(/"PATH"/);
    expect(snapshotTree(repo.root)).toEqual(before);
  });

  it('finds repeated keys per object, wherever they nest, never inside strings', () => {
    const text =
      '{"a": {"b": 1, "b\\"": [{"c": 1, "c": 2}], "b": "}"}, "s": "{\\"a\\": 1, \\"a\\": 2}", "a": [], "": 0, "": 1}';
    expect(JSON.parse(text)).toBeTruthy();
    expect(duplicateKeys(text)).toEqual({ duplicates: ['a.b"[].c', 'a.b', 'a', ''], tooDeep: false });
  });

  it('refuses metadata nested too deep to rewrite before changing anything (JSON.stringify overflowed mid-prune)', async () => {
    const depth = 200_000;
    const repo = editedRepo((text) =>
      text.replace('"x_vendor_field": 42', `"x_deep": ${'['.repeat(depth)}${']'.repeat(depth)}`),
    );
    const before = snapshotTree(repo.root);
    const error = await pruneError(inputs(repo.root));
    expect(error.message).toMatch(/nests objects or arrays more than 1000 levels deep/);
    expect(snapshotTree(repo.root)).toEqual(before);
  });

  it('refuses a Unicode case twin Go folds into a field name (a long s, U+017F, for s)', async () => {
    const repo = editedRepo((text) => text.replace('"versions"', '"ver\u017fions": {}, "versions"'));
    const error = await pruneError(inputs(repo.root));
    expect(error.message).toMatch(/ver\u017fions/);
  });
});

describe('names from images.json in the summary and the log', () => {
  it('cannot add a table row, hide text with bidi controls or colour the log with ANSI escapes', async () => {
    const repo = newRepo('flat');
    const evil = 'evil\r| injected | row |\u202e\u001b[31m';
    for (const v of V.slice(0, 2)) repo.addVersion(evil, v);
    repo.write();
    const { report, log } = await prune(inputs(repo.root, { gracePeriodMs: HOUR }));
    const summary = summaryMarkdown(report);
    const rows = summary.split(/\r\n|\r|\n/).filter((l) => l.startsWith('|'));
    expect(rows).toHaveLength(3);
    for (const hidden of ['\u202e', '\u001b']) expect(summary).not.toContain(hidden);
    for (const hidden of ['\u202e', '\u001b', '\r']) expect(log.join('\n')).not.toContain(hidden);
  });
});

describe('a lock path that is not a lock file', () => {
  function lockedRepo(): { repo: SimplestreamsRepo; lock: string } {
    const repo = newRepo('flat');
    repo.addVersion(P, V[0]!);
    repo.write();
    return { repo, lock: join(repo.root, '.image-ci-prune.lock') };
  }

  it('a directory: fails naming it, and changes nothing', async () => {
    const { repo, lock } = lockedRepo();
    mkdirSync(lock);
    const before = snapshotTree(repo.root);
    const error = await pruneError(inputs(repo.root, { lockTimeoutMs: 500 }));
    expect(error.message).toContain(`${lock} is a directory, not a lock file`);
    expect(snapshotTree(repo.root)).toEqual(before);
  });

  it('a symlink to a file outside: judged as an unreadable lock, never written or removed through', async () => {
    const { repo, lock } = lockedRepo();
    const victim = join(base, `victim-${++counter}`);
    writeFileSync(victim, 'keep me');
    symlinkSync(victim, lock);
    const error = await pruneError(inputs(repo.root, { lockTimeoutMs: 500 }));
    expect(error.message).toMatch(/held by an unknown owner/);
    expect(readFileSync(victim, 'utf8')).toBe('keep me');
    expect(lstatSync(lock).isSymbolicLink()).toBe(true);
  });
});

describe('a publisher that does not take the lock (incus-simplestreams add) writes images.json mid-prune', () => {
  /** The error a prune ends with when `publish` changes the repository between its plan and applying it. */
  async function applyAfter(repo: SimplestreamsRepo, publish: () => void, o: Partial<PruneInputs> = {}) {
    const { applied } = await applyAfterPlan(inputs(repo.root, o), NOW, publish);
    if (applied instanceof Error) throw applied;
    return applied;
  }

  it('keeps the version it added: images.json is not overwritten with the plan made before', async () => {
    const repo = newRepo('flat');
    for (const v of V.slice(0, 3)) repo.addVersion(P, v);
    repo.write();
    const error = await applyAfter(repo, () => {
      repo.addVersion(P, V[3]!);
      repo.write();
    }).catch((e: Error) => e);
    expect((error as Error).message).toMatch(
      /streams\/v1\/images\.json changed while this prune was planning/,
    );
    expect(Object.keys(JSON.parse(readFileSync(imagesJson(repo), 'utf8')).products[P].versions)).toEqual(V);
    expect(repoProblems(repo.root)).toEqual([]);
  });

  it('never deletes a file it references again (flat layout: files are named by content)', async () => {
    const repo = newRepo('flat');
    const old = repo.addVersion(P, V[0]!);
    repo.addVersion('alpine:3.19:default:amd64', V[0]!);
    repo.write();
    // The version's files were unreferenced long ago: the plan deletes them; then the same image is added again.
    const images = JSON.parse(readFileSync(imagesJson(repo), 'utf8'));
    const versions = images.products[P].versions;
    images.products[P].versions = {};
    writeFileSync(imagesJson(repo), JSON.stringify(images));
    const error = await applyAfter(repo, () => {
      images.products[P].versions = versions;
      writeFileSync(imagesJson(repo), JSON.stringify(images));
    }).catch((e: Error) => e);
    for (const path of old.paths) expect(existsSync(join(repo.root, path))).toBe(true);
    expect((error as Error).message).toMatch(/changed while this prune was planning/);
  });
  it('puts a FIFO where images.json was: the prune fails naming the change instead of waiting for a writer', async () => {
    const repo = newRepo('flat');
    for (const v of V.slice(0, 3)) repo.addVersion(P, v);
    repo.write();
    const error = await applyAfter(repo, () => {
      unlinkSync(imagesJson(repo));
      execFileSync('mkfifo', [imagesJson(repo)]);
    }).catch((e: Error) => e);
    expect((error as Error).message).toMatch(
      /streams\/v1\/images\.json changed while this prune was planning/,
    );
    expect(lstatSync(imagesJson(repo)).isFIFO()).toBe(true);
  }, 10_000);
});

describe('a state file older than the metadata on disk (a prune stopped between the two)', () => {
  it('restarts the grace period of a file images.json still references, however early the state says', async () => {
    const repo = newRepo('flat');
    const old = repo.addVersion(P, V[0]!);
    repo.addVersion(P, V[1]!);
    repo.write();
    // A prune killed a day ago after writing its state file, before images.json: clients still fetch V[0].
    repo.writeState(Object.fromEntries(old.paths.map((p) => [p, DAY])));
    const { report } = await prune(inputs(repo.root, { gracePeriodMs: HOUR }));
    expect(report.files.deleted).toEqual([]);
    expect(report.files.deferred.map((f) => f.deletableAt)).toEqual(
      old.paths.map(() => new Date(NOW + HOUR).toISOString()),
    );
    for (const path of old.paths) expect(existsSync(join(repo.root, path))).toBe(true);
  });
});

describe('a products filter', () => {
  it("leaves other products' directories alone: no orphan or empty directory of theirs is deleted", async () => {
    const repo = newRepo('nested');
    const A = 'alpine:3.19:default:amd64';
    for (const v of V.slice(0, 2)) repo.addVersion(P, v);
    repo.addVersion(A, V[0]!);
    const alpineDir = 'images/alpine/3.19/amd64/default';
    const debianDir = 'images/debian/bookworm/amd64/default';
    repo.addOrphan(`${alpineDir}/upload-in-progress.squashfs`, 30 * DAY);
    mkdirSync(join(repo.root, `${alpineDir}/20240501_01:00`));
    repo.age(`${alpineDir}/20240501_01:00`, 30 * DAY);
    repo.addOrphan(`${debianDir}/stale.squashfs`, 30 * DAY);
    repo.write();
    const { report } = await prune(inputs(repo.root, { products: ['debian:*'] }));
    const deleted = report.files.deleted.map((f) => f.path);
    expect(deleted).toContain(`${debianDir}/stale.squashfs`);
    expect(deleted.filter((p) => p.startsWith('images/alpine/'))).toEqual([]);
    expect(report.files.dirsRemoved.filter((p) => p.startsWith('images/alpine/'))).toEqual([]);
    expect(existsSync(join(repo.root, `${alpineDir}/upload-in-progress.squashfs`))).toBe(true);
    expect(existsSync(join(repo.root, `${alpineDir}/20240501_01:00`))).toBe(true);
    expect(repoProblems(repo.root)).toEqual([]);
  });
});

describe('item paths that point into directories images are not kept in', () => {
  function repoWithItemAt(path: string, exists: boolean): SimplestreamsRepo {
    const repo = newRepo('flat');
    const v = repo.addVersion(P, V[0]!);
    repo.addVersion(P, V[1]!);
    type Items = Record<string, { path: string }>;
    const products = repo.images.products as Record<string, { versions: Record<string, { items: Items }> }>;
    // An existing file is moved there for the first version; a missing one is named by the second (broken).
    products[P]!.versions[V[exists ? 0 : 1]!]!.items.squashfs!.path = path;
    if (exists) {
      mkdirSync(join(repo.root, path, '..'), { recursive: true });
      renameSync(join(repo.root, v.rootfs), join(repo.root, path));
    }
    repo.write();
    return repo;
  }

  it('a missing file (a typo, a broken version) does not make its directory a place to delete orphans in', async () => {
    const repo = repoWithItemAt('docs/2024/rootfs.squashfs', false);
    repo.addOrphan('docs/manual.pdf', 30 * DAY);
    await prune(inputs(repo.root));
    expect(existsSync(join(repo.root, 'docs/manual.pdf'))).toBe(true);
  });

  it('a hidden directory (.git of a repository published from git) is never searched for orphans', async () => {
    const repo = repoWithItemAt('.git/lfs/objects/rootfs.squashfs', true);
    repo.addOrphan('.git/config', 30 * DAY);
    repo.addOrphan('.git/lfs/objects/other', 30 * DAY);
    const { report } = await prune(inputs(repo.root, { keepVersions: 2 }));
    expect(report.files.deleted.filter((f) => f.path.startsWith('.git/'))).toEqual([]);
    expect(existsSync(join(repo.root, '.git/config'))).toBe(true);
    expect(existsSync(join(repo.root, '.git/lfs/objects/other'))).toBe(true);
    expect(repoProblems(repo.root)).toEqual([]);
  });

  it("nor images/lost+found, where images/ is a file system of its own (fsck's recovered files; root's 0700)", async () => {
    const repo = newRepo('flat');
    const old = repo.addVersion(P, V[0]!);
    repo.addVersion(P, V[1]!);
    repo.write();
    repo.addOrphan('images/lost+found/#131074', 30 * DAY);
    repo.age('images/lost+found', 30 * DAY);
    const { report } = await prune(inputs(repo.root));
    expect(report.files.deleted.map((f) => f.path)).toEqual([...old.paths].sort());
    expect(report.files.dirsRemoved).toEqual([]);
    expect(existsSync(join(repo.root, 'images/lost+found/#131074'))).toBe(true);
  });

  it("nor a hidden directory inside images/ (a file server's .snapshot or .zfs, a .git), old files and all", async () => {
    const repo = newRepo('flat');
    const old = repo.addVersion(P, V[0]!);
    repo.addVersion(P, V[1]!);
    repo.write();
    // What a NetApp export shows in every directory: read-only copies of earlier states, old files unreferenced.
    const snapshot = old.paths.map((p) => `images/.snapshot/hourly.0/${p.slice('images/'.length)}`);
    for (const path of snapshot) repo.addOrphan(path, 30 * DAY);
    repo.addOrphan('images/.git/config', 30 * DAY);
    mkdirSync(join(repo.root, 'images/.zfs/snapshot'), { recursive: true });
    for (const dir of ['images/.zfs/snapshot', 'images/.zfs']) repo.age(dir, 30 * DAY);
    const { report } = await prune(inputs(repo.root));
    const hidden = (p: string) => p.startsWith('images/.');
    expect(report.files.deleted.map((f) => f.path)).toEqual([...old.paths].sort());
    expect(report.files.dirsRemoved.filter(hidden)).toEqual([]);
    for (const path of [...snapshot, 'images/.git/config', 'images/.zfs/snapshot'])
      expect(existsSync(join(repo.root, path))).toBe(true);
    expect(repoProblems(repo.root)).toEqual([]);
  });
});

/** A plan made, then `meanwhile` changes the repository (anyone who may write there), then the plan applied. */
const applyMeanwhile = (repo: SimplestreamsRepo, meanwhile: () => void) =>
  applyAfterPlan(inputs(repo.root), NOW, meanwhile);

type IndexJson = { index: Record<string, Record<string, unknown>> };

/** Rewrites index.json with `change` made to its data. */
function editIndex(repo: SimplestreamsRepo, change: (index: IndexJson) => void): void {
  const file = join(repo.root, 'streams/v1/index.json');
  const index = JSON.parse(readFileSync(file, 'utf8')) as IndexJson;
  change(index);
  writeFileSync(file, JSON.stringify(index));
}

/** Points index.json's image-downloads entry at `path`, as written. */
const setImagesPath = (repo: SimplestreamsRepo, path: string) =>
  editIndex(repo, (index) => {
    index.index.images!.path = path;
  });

describe('the repository changes between the scan and the deletions', () => {
  // Another platform (no /proc/self/fd: the path is checked right before each removal) is simulated by
  // overriding process.platform, the only thing apply.ts asks.
  it.each(['linux', 'darwin'])(
    'never deletes outside the repository through a directory swapped for a symlink after the scan (%s)',
    async (platform) => {
      const real = process.platform;
      Object.defineProperty(process, 'platform', { value: platform });
      try {
        await swappedDirectory();
      } finally {
        Object.defineProperty(process, 'platform', { value: real });
      }
    },
  );

  async function swappedDirectory(): Promise<void> {
    const repo = newRepo('nested');
    repo.addVersion(P, V[1]!);
    // An old version directory images.json no longer names: its file and then the directory are deleted.
    const dir = 'images/debian/bookworm/amd64/default/20230101_01:00';
    repo.addOrphan(`${dir}/rootfs.squashfs`, 30 * DAY);
    repo.write();
    const outside = join(base, `outside-${++counter}`);
    mkdirSync(outside);
    // The very inode the scan judged, under a name outside: only the check of the directory keeps it.
    linkSync(join(repo.root, `${dir}/rootfs.squashfs`), join(outside, 'rootfs.squashfs'));
    const { plan, applied } = await applyMeanwhile(repo, () => {
      renameSync(join(repo.root, dir), join(repo.root, `${dir}.moved`));
      symlinkSync(outside, join(repo.root, dir));
    });
    expect(plan.delete.map((f) => f.path)).toEqual([`${dir}/rootfs.squashfs`]);
    expect(existsSync(join(outside, 'rootfs.squashfs'))).toBe(true);
    expect(applied).toMatchObject({ deleted: [], changed: [`${dir}/rootfs.squashfs`, dir] });
    expect(lstatSync(join(repo.root, dir)).isSymbolicLink()).toBe(true);
    expect(repoProblems(repo.root)).toEqual([]);
  }

  it('never writes metadata outside the repository through a streams/v1 swapped for a symlink after the scan', async () => {
    const repo = newRepo('flat');
    for (const v of V) repo.addVersion(P, v);
    repo.write();
    // A copy of the metadata outside, so that the check that it is unchanged passes there.
    const outside = join(base, `outside-${++counter}`);
    cpSync(join(repo.root, 'streams/v1'), outside, { recursive: true });
    const before = readFileSync(join(outside, 'images.json'), 'utf8');
    const { plan, applied } = await applyMeanwhile(repo, () => {
      renameSync(join(repo.root, 'streams/v1'), join(repo.root, 'streams/v1.moved'));
      symlinkSync(outside, join(repo.root, 'streams/v1'));
    });
    expect(plan.images).toBeDefined();
    expect(readdirSync(outside).sort()).toEqual(['images.json', 'index.json']);
    expect(readFileSync(join(outside, 'images.json'), 'utf8')).toBe(before);
    expect((applied as Error).message).toMatch(
      /streams\/v1\/images\.json changed while this prune was planning/,
    );
    expect(plan.delete.length).toBeGreaterThan(0);
    for (const f of plan.delete) expect(existsSync(join(repo.root, f.path))).toBe(true);
  });

  it('keeps an old orphan a publisher writes again after the scan, before it names it in images.json', async () => {
    const repo = newRepo('flat');
    repo.addVersion(P, V[1]!);
    // Flat layout: files are named by their content, so re-adding an image writes the very same name.
    const file = 'images/0123456789abcdef.squashfs';
    repo.addOrphan(file, 30 * DAY);
    repo.write();
    const { plan, applied } = await applyMeanwhile(repo, () => {
      writeFileSync(join(repo.root, file), 'the upload of a publisher that takes no lock');
    });
    expect(plan.delete.map((f) => f.path)).toEqual([file]);
    expect(readFileSync(join(repo.root, file), 'utf8')).toBe('the upload of a publisher that takes no lock');
    expect(applied).toMatchObject({ deleted: [], changed: [file] });
  });
});

/** A whole prune at NOW that runs `change` between its plan and its apply; its log lines go to `log`. */
async function pruneChangingBeforeApply(repo: SimplestreamsRepo, change: () => void, log: string[] = []) {
  // The log line a group starts with comes right before the group runs: the moment between plan and apply.
  const host = new CliHost({
    inputs: new MapInputSource({}),
    log: (line) => {
      log.push(line);
      if (line === '== Applying') change();
    },
    out: (line) => log.push(line),
  });
  return pruneRepository(inputs(repo.root), host, { now: () => NOW });
}

describe('a whole prune whose plan a publisher or a sync tool overtakes', () => {
  it.each([
    ['written again (a publisher)', (file: string) => writeFileSync(file, 'uploaded again')],
    ['chmod-ed (a sync tool)', (file: string) => chmodSync(file, 0o644)],
  ])(
    'leaves an old orphan %s after the scan; the warning, the report file and the summary name it',
    async (_, change) => {
      const repo = newRepo('flat');
      repo.addVersion(P, V[0]!);
      const file = 'images/fedcba9876543210.squashfs';
      repo.addOrphan(file, 30 * DAY);
      repo.write();
      const log: string[] = [];
      const report = await pruneChangingBeforeApply(repo, () => change(join(repo.root, file)), log);
      expect(report.files).toMatchObject({ deleted: [], deferred: [], leftAlone: [file] });
      expect(existsSync(join(repo.root, file))).toBe(true);
      expect(log).toContain(
        'warning: left 1 planned removal(s) alone: the entry or its directory changed since the scan (a publisher ' +
          `that does not take the lock?); the next prune judges them again: ${file}`,
      );
      expect(summaryMarkdown(report)).toContain('Left 1 planned removal(s) alone: changed since the scan');
    },
  );
});

describe("this machine's clock ahead of the repository's file system (an NFS server's)", () => {
  it('keeps a fresh upload for its grace period (Date.now mocked 2 h ahead: a clock cannot be skewed here)', async () => {
    const repo = newRepo('flat');
    repo.addVersion(P, V[0]!);
    repo.write();
    // Written now by the file system's clock, as a publisher's upload in progress is.
    const upload = join(repo.root, 'images/upload-in-progress.squashfs');
    writeFileSync(upload, 'half an image');
    const ahead = Date.now() + 2 * HOUR;
    const clock = jest.spyOn(Date, 'now').mockImplementation(() => ahead);
    try {
      const { report, log } = await pruneAt(inputs(repo.root, { gracePeriodMs: HOUR }), ahead);
      expect(report.files.deleted).toEqual([]);
      expect(report.files.deferred.map((f) => f.path)).toEqual(['images/upload-in-progress.squashfs']);
      expect(log.join('\n')).toMatch(
        /this machine's clock is 1[12]\dm\d+s ahead of the repository's file system/,
      );
    } finally {
      clock.mockRestore();
    }
    expect(existsSync(upload)).toBe(true);
  });
});

describe("this machine's clock behind the repository's file system, then a prune from one that is right", () => {
  it('keeps the grace period of files the first prune unreferenced (Date.now mocked 2 h behind)', async () => {
    const repo = newRepo('flat');
    const old = repo.addVersion(P, V[0]!);
    repo.addVersion(P, V[1]!);
    repo.write();
    const behind = Date.now() - 2 * HOUR;
    const clock = jest.spyOn(Date, 'now').mockImplementation(() => behind);
    const first = await pruneAt(inputs(repo.root, { gracePeriodMs: HOUR }), NOW - 2 * HOUR).finally(() =>
      clock.mockRestore(),
    );
    expect(first.report.files.deferred.map((f) => f.path).sort()).toEqual([...old.paths].sort());
    // Minutes later by the file system's clock: clients that cached the old images.json still fetch these.
    const { report } = await pruneAt(inputs(repo.root, { gracePeriodMs: HOUR }), NOW);
    expect(report.files.deleted).toEqual([]);
    for (const path of old.paths) expect(existsSync(join(repo.root, path))).toBe(true);
    expect(first.log.join('\n')).toMatch(
      /this machine's clock is 1[12]\dm\d+s behind the repository's file system/,
    );
  });
});

describe('hard-linked copies (a deduplicating tool)', () => {
  it('deletes every name of an old orphan inode in one prune: unlinking one name moves the others’ ctime', async () => {
    const repo = newRepo('flat');
    repo.addVersion(P, V[0]!);
    repo.addOrphan('images/a.squashfs', 30 * DAY);
    linkSync(join(repo.root, 'images/a.squashfs'), join(repo.root, 'images/b.squashfs'));
    repo.write();
    const { report, log } = await pruneAt(inputs(repo.root), NOW);
    expect(report.files.deleted.map((f) => f.path)).toEqual(['images/a.squashfs', 'images/b.squashfs']);
    expect(existsSync(join(repo.root, 'images/b.squashfs'))).toBe(false);
    expect(log.join('\n')).not.toMatch(/changed since the scan/);
  });
});

describe('content directories on file systems of their own (a ZFS dataset per product) [tmpfs, needs root]', () => {
  it('leaves an emptied mount point, and an inode number unlinked on one excuses no changed file on another', async () => {
    const repo = newRepo('flat');
    repo.addVersion(P, V[0]!);
    const mounts = ['images/a', 'images/b'].map((dir) => join(repo.root, dir));
    for (const dir of mounts) {
      mkdirSync(dir);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir]);
    }
    try {
      // Each new tmpfs numbers its inodes from the start: both orphans get the same number.
      for (const name of ['a/old.squashfs', 'b/old.squashfs']) repo.addOrphan(`images/${name}`, 30 * DAY);
      const [a, b] = ['images/a/old.squashfs', 'images/b/old.squashfs'];
      expect(lstatSync(join(repo.root, a)).ino).toBe(lstatSync(join(repo.root, b)).ino);
      repo.write();
      const report = await pruneChangingBeforeApply(repo, () => chmodSync(join(repo.root, b), 0o600));
      expect(report.files.deleted.map((f) => f.path)).toEqual([a]);
      expect(existsSync(join(repo.root, b))).toBe(true);
      expect(report.files).toMatchObject({ dirsRemoved: [], leftAlone: [b] });
    } finally {
      for (const dir of mounts) execFileSync('umount', [dir]);
    }
  });
});

describe('a product directory on a read-only mount (a snapshot, an export) [bind mount, needs root]', () => {
  it('removes the rest, lists what the file system refused, keeps its state and fails the step after the report', async () => {
    // Ages by the real clock: main prunes at Date.now().
    const repo = new SimplestreamsRepo(join(base, `r${++counter}`), 'nested');
    const other = 'alpine:3.19:default:amd64';
    const stuck = [V[0]!, V[1]!].map((v) => repo.addVersion(other, v));
    repo.addVersion(other, V[2]!);
    const freed = [V[0]!, V[1]!].map((v) => repo.addVersion(P, v));
    repo.addVersion(P, V[2]!);
    repo.write();
    const readOnly = join(repo.root, 'images/alpine');
    execFileSync('mount', ['--bind', readOnly, readOnly]);
    try {
      execFileSync('mount', ['-o', 'remount,ro,bind', readOnly]);
      const reportFile = join(base, `report-${counter}.json`);
      const host = new CliHost({ inputs: new MapInputSource({}), log: () => {}, out: () => {} });
      const error = await main(host, inputs(repo.root, { reportFile })).then(
        () => new Error('expected the step to fail'),
        (e: Error) => e,
      );
      const refused = stuck.flatMap((v) => v.paths).sort();
      expect(error.message).toContain('the file system refused to remove these');
      for (const path of refused) expect(error.message).toContain(`${path}: EROFS: read-only file system\n`);
      expect(error.message).not.toContain('/proc/self/fd');
      const report = JSON.parse(readFileSync(reportFile, 'utf8')) as PruneReport;
      expect(report.files.deleted.map((f) => f.path)).toEqual(freed.flatMap((v) => v.paths).sort());
      expect(report.files.failed.map((f) => f.path).sort()).toEqual(refused);
      expect(host.outputs.get('removed-files')).toBe('4');
      const state = JSON.parse(readFileSync(join(repo.root, '.image-ci-prune-state.json'), 'utf8'));
      expect(Object.keys(state.unreferencedSince).sort()).toEqual(refused);
      expect(repoProblems(repo.root)).toEqual([]);
    } finally {
      execFileSync('umount', [readOnly]);
    }
  });
});

describe('a repository whose file system is full (the moment a prune is most needed) [tmpfs, needs root]', () => {
  it('deletes what the metadata already does not name first, so the state and metadata writes find room', async () => {
    const root = join(base, `r${++counter}`);
    mkdirSync(root);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', root]);
    try {
      const repo = new SimplestreamsRepo(root, 'flat', NOW);
      const dropped = repo.addVersion(P, V[0]!);
      repo.addVersion(P, V[1]!);
      repo.write();
      // An old upload that died (ENOSPC) filled the disk: an orphan of every byte left but a page, room for the lock.
      const stale = join(root, 'images/stale-upload.squashfs');
      expect(() => writeFileSync(stale, Buffer.alloc(2 << 20, 1))).toThrow(/ENOSPC/);
      truncateSync(stale, lstatSync(stale).size - 4096);
      repo.age('images/stale-upload.squashfs', 30 * DAY);
      const { report } = await prune(inputs(root, { gracePeriodMs: HOUR }));
      expect(report.files.deleted.map((f) => f.path)).toEqual(['images/stale-upload.squashfs']);
      expect(report.files.deferred.map((f) => f.path)).toEqual([...dropped.paths].sort());
      expect(versionsOf(root, P)).toEqual([V[1]!]);
      expect(readdirSync(join(root, 'streams/v1'))).toEqual(['images.json', 'index.json']);
      expect(repoProblems(root)).toEqual([]);
    } finally {
      execFileSync('umount', [root]);
    }
  });
});

describe('repository text in error messages reaches the log as one printable line', () => {
  const hostile = '\u001b[2J\u001b[31m\u202e';
  const printable = (message: string) => {
    for (const c of ['\u001b', '\u202e', '\r']) expect(message).not.toContain(c);
  };

  it('images.json that is not JSON (JSON.parse quotes the start of the text)', async () => {
    const repo = newRepo('flat');
    repo.addVersion(P, V[0]!);
    repo.write();
    writeFileSync(join(repo.root, 'streams/v1/images.json'), `${hostile}not json`);
    const error = await pruneFailure(inputs(repo.root), NOW);
    expect(error.message).toMatch(/streams\/v1\/images\.json is not valid JSON/);
    printable(error.message);
  });

  it('an index entry key, an images.json path named by index.json, and a state file entry', async () => {
    const repo = newRepo('flat');
    repo.addVersion(P, V[0]!);
    repo.write();
    editIndex(repo, (index) => {
      index.index = { [hostile]: { datatype: 'image-downloads' } };
    });
    const keyError = await pruneFailure(inputs(repo.root), NOW);
    expect(keyError.message).toMatch(/\.path is not a string/);
    printable(keyError.message);

    repo.write();
    setImagesPath(repo, `streams/v1/${hostile}images.json`);
    const pathError = await pruneFailure(inputs(repo.root), NOW);
    expect(pathError.message).toMatch(/images\.json is missing/);
    printable(pathError.message);

    repo.write();
    writeFileSync(
      join(repo.root, '.image-ci-prune-state.json'),
      JSON.stringify({ version: 1, unreferencedSince: { [`images/${hostile}x`]: 'never' } }),
    );
    const stateError = await pruneFailure(inputs(repo.root), NOW);
    expect(stateError.message).toMatch(/has an invalid entry/);
    printable(stateError.message);
  });

  it('an images.json path named by index.json, in the message about a publisher changing it mid-prune', async () => {
    const repo = newRepo('flat');
    for (const v of V) repo.addVersion(P, v);
    repo.write();
    setImagesPath(repo, `streams/v1/${hostile}images.json`);
    const images = join(repo.root, `streams/v1/${hostile}images.json`);
    renameSync(join(repo.root, 'streams/v1/images.json'), images);
    const { applied } = await applyMeanwhile(repo, () => writeFileSync(images, '{"products": {}}'));
    expect((applied as Error).message).toMatch(/images\.json changed while this prune was planning/);
    printable((applied as Error).message);
  });

  it("a lock held by another host whose name and time are the lock file's text", async () => {
    const repo = newRepo('flat');
    repo.addVersion(P, V[0]!);
    repo.write();
    const lock = join(repo.root, '.image-ci-prune.lock');
    writeFileSync(lock, JSON.stringify({ pid: 1, host: `${hostname()}-other${hostile}`, time: hostile }));
    const error = await pruneFailure(inputs(repo.root, { lockTimeoutMs: 300 }), NOW);
    expect(error.message).toMatch(/is held by pid 1 on/);
    printable(error.message);
    expect(existsSync(lock)).toBe(true);
  });
});

describe('version names clients read differently from Date.UTC', () => {
  it('counts a version dated in the years 0-99 as clients do (Go parses 0050 as year 50, Date.UTC as 1950)', async () => {
    const repo = newRepo('flat');
    const ancient = repo.addVersion(P, '00500101');
    repo.addVersion(P, V[0]!);
    repo.write();
    expect(versionTimeMs('00500101')).toBe(new Date('0050-01-01T00:00:00Z').getTime());
    expect(versionTimeMs('00000229_12:30')).toBe(new Date('0000-02-29T12:30:00Z').getTime());
    const { report } = await pruneAt(inputs(repo.root), NOW);
    expect(report.products[0]).toMatchObject({
      kept: [V[0]],
      dropped: [{ version: '00500101' }],
      ignored: [],
    });
    for (const path of ancient.paths) expect(existsSync(join(repo.root, path))).toBe(false);
    expect(repoProblems(repo.root)).toEqual([]);
  });
});

describe("item paths, as clients resolve them (incus and LXD fetch them through Go's url.JoinPath too)", () => {
  it('keeps the file a %XX escape names (the web server decodes it) and the version that uses it', async () => {
    const repo = newRepo('flat');
    const old = repo.addVersion(P, V[0]!);
    const kept = repo.addVersion(P, V[1]!);
    type Items = Record<string, { path: string }>;
    const products = repo.images.products as Record<string, { versions: Record<string, { items: Items }> }>;
    // A publisher that escapes what it writes: clients ask for images/<sha>%2Esquashfs and get images/<sha>.squashfs.
    products[P]!.versions[V[0]!]!.items.squashfs!.path = old.rootfs.replace(/\.squashfs$/, '%2Esquashfs');
    repo.write();
    const { report } = await pruneAt(inputs(repo.root, { keepVersions: 2 }), NOW);
    expect(report.products[0]).toMatchObject({ kept: [V[1], V[0]], dropped: [], broken: [] });
    expect(report.files.deleted).toEqual([]);
    for (const path of [...old.paths, ...kept.paths]) expect(existsSync(join(repo.root, path))).toBe(true);
  });

  it('refuses an item path with a % that starts no escape, or an escaped .. (clients never get that file)', async () => {
    const repo = newRepo('flat');
    repo.addVersion(P, V[0]!);
    type Items = Record<string, { path: string }>;
    const products = repo.images.products as Record<string, { versions: Record<string, { items: Items }> }>;
    for (const [path, why] of [
      ['images/50%off.squashfs', /path 'images\/50%off\.squashfs' has a '%' that starts no %XX escape/],
      [
        'images/x/%2e%2e/a.squashfs',
        /\(as clients decode it: 'images\/x\/\.\.\/a\.squashfs'\) has an escaped '\.\.'/,
      ],
    ] as const) {
      products[P]!.versions[V[0]!]!.items.squashfs!.path = path;
      repo.write();
      expect((await pruneFailure(inputs(repo.root), NOW)).message).toMatch(why);
    }
  });
});

describe("index.json's images path, as clients resolve it (Go's url.JoinPath takes it as escaped)", () => {
  it('reads the images.json clients read, not a decoy named by the escaped spelling', async () => {
    const repo = newRepo('flat');
    const old = repo.addVersion(P, V[0]!);
    const kept = repo.addVersion(P, V[1]!);
    repo.write();
    setImagesPath(repo, 'streams/v1/images%2Ejson');
    // The file a literal reading finds: only the newer version, so the older one's files look like orphans.
    const decoy = JSON.parse(readFileSync(join(repo.root, 'streams/v1/images.json'), 'utf8'));
    delete decoy.products[P].versions[V[0]!];
    writeFileSync(join(repo.root, 'streams/v1/images%2Ejson'), JSON.stringify(decoy));
    const { report } = await pruneAt(inputs(repo.root, { keepVersions: 2 }), NOW);
    expect(report.products[0]).toMatchObject({ kept: [V[1], V[0]], dropped: [] });
    for (const path of [...old.paths, ...kept.paths]) expect(existsSync(join(repo.root, path))).toBe(true);
  });

  it('refuses escapes that decode to no UTF-8 (clients open the raw bytes; U+FFFD names a decoy)', async () => {
    const repo = newRepo('flat');
    const old = repo.addVersion(P, V[0]!);
    repo.addVersion(P, V[1]!);
    repo.write();
    const dir = join(repo.root, 'streams/v1');
    // What clients get for images%FF.json: the file named by the byte 0xFF, listing both versions; the decoy
    // at U+FFFD lists only the newer one, so the older one's files look like orphans.
    const decoy = JSON.parse(readFileSync(join(dir, 'images.json'), 'utf8'));
    delete decoy.products[P].versions[V[0]!];
    renameSync(join(dir, 'images.json'), Buffer.from(`${dir}/images\xff.json`, 'latin1'));
    writeFileSync(join(dir, 'images\ufffd.json'), JSON.stringify(decoy));
    setImagesPath(repo, 'streams/v1/images%FF.json');
    const error = await pruneFailure(inputs(repo.root, { keepVersions: 2 }), NOW);
    expect(error.message).toMatch(/images%FF\.json' decodes to a file name that is not UTF-8/);
    for (const path of old.paths) expect(existsSync(join(repo.root, path))).toBe(true);
    // A byte order mark decoded is part of the name, not dropped; `+` is a plus, `%252e` decodes once.
    expect(unescapeUrlPath('%EF%BB%BFimages%2ejson')).toBe('\ufeffimages.json');
    expect(unescapeUrlPath('a+b%252e')).toBe('a+b%2e');
  });

  it('resolves a .. as Go does, on the escaped path: it pops `sub%2Fx` whole, not the `x` a decoded reading finds', async () => {
    const repo = newRepo('flat');
    const old = repo.addVersion(P, V[0]!);
    repo.addVersion(P, V[1]!);
    repo.write();
    // Clients get streams/v1/images.json (both versions); the decoy at streams/v1/sub/images.json lists only the
    // newer one, so the older one's files would look like orphans.
    const decoy = JSON.parse(readFileSync(join(repo.root, 'streams/v1/images.json'), 'utf8'));
    delete decoy.products[P].versions[V[0]!];
    mkdirSync(join(repo.root, 'streams/v1/sub'));
    writeFileSync(join(repo.root, 'streams/v1/sub/images.json'), JSON.stringify(decoy));
    setImagesPath(repo, 'streams/v1/sub%2Fx/../images.json');
    const { report } = await pruneAt(inputs(repo.root, { keepVersions: 2 }), NOW);
    expect(report.products[0]).toMatchObject({ kept: [V[1], V[0]], dropped: [] });
    for (const path of old.paths) expect(existsSync(join(repo.root, path))).toBe(true);
  });

  it('refuses an escape that decodes to .., and a % that starts no escape (clients never get that file)', async () => {
    const repo = newRepo('flat');
    repo.addVersion(P, V[0]!);
    repo.write();
    for (const [path, why] of [
      [
        'streams/v1/%2e%2e/%2E%2E/images.json',
        /\(as clients decode it: 'streams\/v1\/\.\.\/\.\.\/images\.json'\) has an escaped '\.\.'/,
      ],
      ['streams/v1/images%zz.json', /has a '%' that starts no %XX escape/],
      // Escaped slashes around a `..`: Go leaves it to the web server too.
      [
        'streams/v1/sub%2F..%2Fimages.json',
        /\(as clients decode it: 'streams\/v1\/sub\/\.\.\/images\.json'\) has an escaped '\.\.'/,
      ],
      ['streams/v1/sub/..%2F..%2Fv1/images.json', /has an escaped '\.\.'/],
    ] as const) {
      setImagesPath(repo, path);
      expect((await pruneFailure(inputs(repo.root), NOW)).message).toMatch(why);
    }
  });
});
