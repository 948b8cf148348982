/**
 * A publisher that takes no lock and copies a repository built elsewhere with `rsync -a` (or `cp -p`, `tar -x`):
 * the copies keep the build's mtimes, hours or days old, and images/ arrives before streams/v1/. A prune between
 * the two must not take the new files for old orphans. Real clock throughout: only the copy's ctime is new.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import {
  copyFileSync,
  existsSync,
  lutimesSync,
  mkdirSync,
  mkdtempSync,
  renameSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  copyLikeRsync,
  listFiles,
  pruneAt,
  pruneInputs,
  repoProblems,
  SimplestreamsRepo,
} from '../support/simplestreams-fixture.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const P = 'debian:bookworm:default:amd64';
const DIR = 'images/debian/bookworm/amd64/default';
const V = ['20240101_01:00', '20240201_01:00', '20240301_01:00'];
const base = mkdtempSync(join(tmpdir(), 'ici-prune-rsync-'));
afterAll(() => rmSync(base, { recursive: true, force: true }));

describe('a publisher that copies with preserved mtimes and takes no lock (rsync -a)', () => {
  it('keeps the new files, links, temp files and empty dirs until images.json names them', async () => {
    const live = new SimplestreamsRepo(join(base, 'live'), 'nested');
    live.addVersion(P, V[0]!, { sidecars: true });
    live.addVersion(P, V[1]!, { sidecars: true });
    live.write();

    // Built three days ago: every mtime rsync preserves is that old.
    const build = new SimplestreamsRepo(join(base, 'build'), 'nested');
    for (const v of V) build.addVersion(P, v, { sidecars: true, vm: true, ageMs: 3 * DAY });
    const rootfs = `${DIR}/${V[2]}/rootfs.squashfs`;
    const pooled = `${DIR}/pool/${V[2]}.squashfs`;
    build.moveBehindSymlink(rootfs, pooled);
    build.age(pooled, 3 * DAY);
    const old = new Date(Date.now() - 3 * DAY);
    lutimesSync(join(build.root, rootfs), old, old);
    mkdirSync(join(build.root, DIR, V[2]!, 'extras'));
    build.age(`${DIR}/${V[2]}/extras`, 3 * DAY);
    build.write();

    const copiedFrom = Date.now();
    copyLikeRsync(build.root, live.root, 'images');
    // rsync's temp of the one file still on its way: mtime already set, not yet renamed into place.
    const disk = `${DIR}/${V[2]}/disk.qcow2`;
    const temp = `${DIR}/${V[2]}/.disk.qcow2.Xy12Zq`;
    rmSync(join(live.root, disk));
    copyFileSync(join(build.root, disk), join(live.root, temp));
    live.age(temp, 3 * DAY);
    const arrived = listFiles(live.root);

    const options = pruneInputs(live.root, { keepVersions: 3, gracePeriodMs: HOUR, verify: 'size' });
    const dry = await pruneAt({ ...options, dryRun: true }, Date.now());
    const { report } = await pruneAt(options, Date.now());
    const left = listFiles(live.root);
    // rsync finishes (its rename fails if the temp is gone), then sends streams/v1/ last: what clients see.
    if (existsSync(join(live.root, temp))) renameSync(join(live.root, temp), join(live.root, disk));
    copyLikeRsync(build.root, live.root, 'streams');
    expect(repoProblems(live.root)).toEqual([]);

    expect(report.files.deleted).toEqual([]);
    expect(left).toEqual(arrived);
    expect(existsSync(join(live.root, DIR, V[2]!, 'extras'))).toBe(true);
    // The report says when: a grace period after the copy, not after the build (less a second: ctime comes
    // from the kernel's coarse clock, which may lag Date.now()).
    const deferred = new Map(report.files.deferred.map((f) => [f.path, Date.parse(f.deletableAt)]));
    for (const path of [rootfs, pooled, temp, `${DIR}/${V[2]}/incus.tar.xz`, `${DIR}/${V[2]}/SHA256SUMS`]) {
      expect([path, deferred.get(path)! >= copiedFrom - 1000 + HOUR]).toEqual([path, true]);
    }
    expect(dry.report.files).toEqual(report.files);
  });
});

describe('an mtime in the future (a publisher clock years ahead, touch -d 2100-01-01)', () => {
  it('does not keep an orphan until that date: it ages from when it arrived (ctime), like any other', async () => {
    const repo = new SimplestreamsRepo(join(base, 'future'), 'nested');
    repo.addVersion(P, V[0]!);
    repo.write();
    const orphans = [`${DIR}/stray-future.bin`, `${DIR}/stray-now.bin`];
    for (const orphan of orphans) writeFileSync(join(repo.root, orphan), 'not named by any metadata');
    const year2100 = Date.UTC(2100, 0, 1) / 1000;
    utimesSync(join(repo.root, orphans[0]!), year2100, year2100);
    const options = pruneInputs(repo.root, { keepVersions: 3, gracePeriodMs: HOUR, verify: 'size' });

    // Now: both arrived a moment ago, both wait out the grace period from their arrival, not from 2100.
    const early = await pruneAt({ ...options, dryRun: true }, Date.now());
    expect(early.report.files.deleted).toEqual([]);
    const until = new Map(early.report.files.deferred.map((f) => [f.path, Date.parse(f.deletableAt)]));
    expect(until.get(orphans[0]!)! - until.get(orphans[1]!)!).toBeLessThan(60_000);

    // Two hours on (the grace period is one), both are deleted.
    const { report } = await pruneAt(options, Date.now() + 2 * HOUR);
    expect(report.files.deleted.map((f) => f.path).sort()).toEqual(orphans);
    expect(orphans.filter((o) => existsSync(join(repo.root, o)))).toEqual([]);
  });
});
