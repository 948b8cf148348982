/**
 * A hostile world around a prune in-process: someone who may write in the repository (a publisher's account)
 * changes it between the scan and the deletions, and metadata, state and lock files whose text reaches the log
 * through error messages.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import {
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { applyPlan } from '../../src/actions/prune-simplestreams/apply.js';
import { loadCatalog } from '../../src/actions/prune-simplestreams/catalog.js';
import type { PruneInputs } from '../../src/actions/prune-simplestreams/inputs.js';
import { planPrune } from '../../src/actions/prune-simplestreams/plan.js';
import { scanRepository } from '../../src/actions/prune-simplestreams/scan.js';
import { versionTimeMs } from '../../src/actions/prune-simplestreams/versions.js';
import {
  clockAhead,
  pruneAt,
  pruneFailure,
  pruneInputs,
  repoProblems,
  SimplestreamsRepo,
} from '../support/simplestreams-fixture.js';

const DAY = 24 * 3_600_000;
const NOW = clockAhead();
const P = 'debian:bookworm:default:amd64';
const V = ['20240101_01:00', '20240201_01:00'];
const base = mkdtempSync(join(tmpdir(), 'ici-prune-world-'));
let counter = 0;
afterAll(() => rmSync(base, { recursive: true, force: true }));

function newRepo(layout: 'flat' | 'nested'): SimplestreamsRepo {
  return new SimplestreamsRepo(join(base, `r${++counter}`), layout, NOW);
}

const inputs = (path: string, o: Partial<PruneInputs> = {}) =>
  pruneInputs(path, { keepVersions: 1, gracePeriodMs: 0, verify: 'size', ...o });

/** Loads, scans and plans like a prune, then lets `meanwhile` change the repository before the plan is applied. */
async function applyAfter(repo: SimplestreamsRepo, meanwhile: () => void) {
  const catalog = await loadCatalog(repo.root);
  const facts = await scanRepository(repo.root, catalog, []);
  const plan = planPrune(catalog, facts, new Map(), { ...inputs(repo.root), nowMs: NOW });
  meanwhile();
  const applied = await applyPlan(repo.root, catalog, plan, new Map()).catch((error: Error) => error);
  return { plan, applied };
}

describe('the repository changes between the scan and the deletions', () => {
  it('never deletes outside the repository through a directory swapped for a symlink after the scan', async () => {
    const repo = newRepo('nested');
    repo.addVersion(P, V[1]!);
    // An old version directory images.json no longer names: its file and then the directory are deleted.
    const dir = 'images/debian/bookworm/amd64/default/20230101_01:00';
    repo.addOrphan(`${dir}/rootfs.squashfs`, 30 * DAY);
    repo.write();
    const outside = join(base, `outside-${++counter}`);
    mkdirSync(outside);
    writeFileSync(join(outside, 'rootfs.squashfs'), 'not the repository’s');
    const { plan, applied } = await applyAfter(repo, () => {
      renameSync(join(repo.root, dir), join(repo.root, `${dir}.moved`));
      symlinkSync(outside, join(repo.root, dir));
    });
    expect(plan.delete.map((f) => f.path)).toEqual([`${dir}/rootfs.squashfs`]);
    expect(readFileSync(join(outside, 'rootfs.squashfs'), 'utf8')).toBe('not the repository’s');
    expect(applied).toMatchObject({ deleted: [], changed: [`${dir}/rootfs.squashfs`, dir] });
    expect(lstatSync(join(repo.root, dir)).isSymbolicLink()).toBe(true);
    expect(repoProblems(repo.root)).toEqual([]);
  });

  it('never writes metadata outside the repository through a streams/v1 swapped for a symlink after the scan', async () => {
    const repo = newRepo('flat');
    for (const v of V) repo.addVersion(P, v);
    repo.write();
    // A copy of the metadata outside, so that the check that it is unchanged passes there.
    const outside = join(base, `outside-${++counter}`);
    cpSync(join(repo.root, 'streams/v1'), outside, { recursive: true });
    const before = readFileSync(join(outside, 'images.json'), 'utf8');
    const { plan, applied } = await applyAfter(repo, () => {
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
    const { plan, applied } = await applyAfter(repo, () => {
      writeFileSync(join(repo.root, file), 'the upload of a publisher that takes no lock');
    });
    expect(plan.delete.map((f) => f.path)).toEqual([file]);
    expect(readFileSync(join(repo.root, file), 'utf8')).toBe('the upload of a publisher that takes no lock');
    expect(applied).toMatchObject({ deleted: [], changed: [file] });
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
    const indexFile = join(repo.root, 'streams/v1/index.json');
    const index = JSON.parse(readFileSync(indexFile, 'utf8'));
    writeFileSync(
      indexFile,
      JSON.stringify({ ...index, index: { [hostile]: { datatype: 'image-downloads' } } }),
    );
    const keyError = await pruneFailure(inputs(repo.root), NOW);
    expect(keyError.message).toMatch(/\.path is not a string/);
    printable(keyError.message);

    index.index.images.path = `streams/v1/${hostile}images.json`;
    writeFileSync(indexFile, JSON.stringify(index));
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
    const indexFile = join(repo.root, 'streams/v1/index.json');
    const index = JSON.parse(readFileSync(indexFile, 'utf8'));
    index.index.images.path = `streams/v1/${hostile}images.json`;
    writeFileSync(indexFile, JSON.stringify(index));
    const images = join(repo.root, index.index.images.path);
    renameSync(join(repo.root, 'streams/v1/images.json'), images);
    const { applied } = await applyAfter(repo, () => writeFileSync(images, '{"products": {}}'));
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

describe("index.json's images path, as clients resolve it (Go's url.JoinPath takes it as escaped)", () => {
  it('reads the images.json clients read, not a decoy named by the escaped spelling', async () => {
    const repo = newRepo('flat');
    const old = repo.addVersion(P, V[0]!);
    const kept = repo.addVersion(P, V[1]!);
    repo.write();
    const indexFile = join(repo.root, 'streams/v1/index.json');
    const index = JSON.parse(readFileSync(indexFile, 'utf8'));
    index.index.images.path = 'streams/v1/images%2Ejson';
    writeFileSync(indexFile, JSON.stringify(index));
    // The file a literal reading finds: only the newer version, so the older one's files look like orphans.
    const decoy = JSON.parse(readFileSync(join(repo.root, 'streams/v1/images.json'), 'utf8'));
    delete decoy.products[P].versions[V[0]!];
    writeFileSync(join(repo.root, 'streams/v1/images%2Ejson'), JSON.stringify(decoy));
    const { report } = await pruneAt(inputs(repo.root, { keepVersions: 2 }), NOW);
    expect(report.products[0]).toMatchObject({ kept: [V[1], V[0]], dropped: [] });
    for (const path of [...old.paths, ...kept.paths]) expect(existsSync(join(repo.root, path))).toBe(true);
  });

  it('refuses an escape that decodes to .., and a % that starts no escape (clients never get that file)', async () => {
    const repo = newRepo('flat');
    repo.addVersion(P, V[0]!);
    repo.write();
    const indexFile = join(repo.root, 'streams/v1/index.json');
    const index = JSON.parse(readFileSync(indexFile, 'utf8'));
    for (const [path, why] of [
      [
        'streams/v1/%2e%2e/%2E%2E/images.json',
        /\(as clients decode it: 'streams\/v1\/\.\.\/\.\.\/images\.json'\) contains '\.\.'/,
      ],
      ['streams/v1/images%zz.json', /has a '%' that starts no %XX escape/],
    ] as const) {
      index.index.images.path = path;
      writeFileSync(indexFile, JSON.stringify(index));
      expect((await pruneFailure(inputs(repo.root), NOW)).message).toMatch(why);
    }
  });
});
