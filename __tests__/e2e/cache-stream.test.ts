/**
 * The streaming restore (core/cache-stream.ts) through the public cache API, in-process, against the local cache
 * service: entries are saved by the real @actions/cache, restored by the stream (ranged GETs into zstd | tar),
 * and every fault makes it resume, fall back to the library, or undo what it extracted.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, jest } from '@jest/globals';
import * as cache from '@actions/cache';
import { which } from '@actions/io';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  existsSync,
  linkSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { restoreCache, saveCache } from '../../src/core/cache.js';
import { compressionMethod } from '../../src/core/cache-version.js';
import { restoreCacheMounts } from '../../src/actions/remote-build-env/cache-mounts.js';
import { CacheService, laterRun, type CacheCall } from '../support/cache-service.js';
import { testUser } from '../support/podman-matrix.js';
import {
  cacheEnv,
  captureStdout,
  cliHost,
  fillRandom,
  jobDirs,
  treeDigest,
  withShims,
} from '../support/cache-files.js';

const MiB = 1024 * 1024;
const FALLBACK = /^Streaming restore not used \((.*)\); restoring through @actions\/cache\.$/;
const env = cacheEnv();
let service: CacheService;
let dirs: ReturnType<typeof jobDirs>;

/** A tree like a build cache: several multi-range random files, a small script, a nested dir. */
async function fillTree(dir: string, files = 3, bytesEach = 7 * MiB): Promise<string> {
  await fillRandom(dir, files, bytesEach);
  mkdirSync(join(dir, 'nested', 'deeper'), { recursive: true });
  writeFileSync(join(dir, 'nested', 'deeper', 'run.sh'), '#!/bin/sh\necho hi\n', { mode: 0o755 });
  return treeDigest(dir);
}

/** A tree filled at `dir` and saved under `key` by an earlier job; this job starts later. Answers its digest. */
async function savedTree(dir: string, key: string, files?: number, bytesEach?: number): Promise<string> {
  const digest = await fillTree(dir, files, bytesEach);
  await saveWithLibrary([dir], key);
  await laterRun([dirs.runnerTemp]);
  return digest;
}

/** Saves with the unmodified library, as an earlier job (or actions/cache itself) would. */
async function saveWithLibrary(paths: string[], key: string): Promise<void> {
  const { value } = await captureStdout(() => cache.saveCache(paths, key));
  expect(value).toBeGreaterThan(0);
}

/**
 * Puts a crafted archive in place of the entry saved under `key` (a poisoned cache): `build` writes a tar file
 * with real tar (absolute names, -P, as an attacker would), which is then compressed like the library's.
 */
function poison(key: string, build: (tarFile: string) => void): void {
  const tarFile = join(dirs.base, `poison-${key}.tar`);
  rmSync(tarFile, { force: true });
  build(tarFile);
  execFileSync('zstd', ['-q', '-f', '--long=30', tarFile, '-o', `${tarFile}.zst`]);
  service.replaceArchive(key, `${tarFile}.zst`);
}

const tarP = (...args: string[]) => execFileSync('tar', ['--posix', '-P', ...args]);

/** A path whose last name ends in raw bytes (not UTF-8: no string can name it). */
const rawPath = (path: string, ...bytes: number[]) => Buffer.concat([Buffer.from(path), Buffer.from(bytes)]);

/** Archives (or appends, `-rf`) exactly these paths, in this order, whatever bytes their names hold. */
function tarRaw(tarFile: string, paths: Array<string | Buffer>, op = '-cf'): void {
  const list = `${tarFile}.list`;
  writeFileSync(list, Buffer.concat(paths.flatMap((p) => [Buffer.from(p), Buffer.alloc(1)])));
  tarP('--no-recursion', '--null', op, tarFile, '-T', list);
  rmSync(list);
}

/** What a tree holds, without following its symlinks: each entry's kind and link target or content digest. */
function listTree(dir: string, at = ''): string[] {
  return readdirSync(join(dir, at))
    .sort()
    .flatMap((name) => {
      const rel = join(at, name);
      const st = lstatSync(join(dir, rel));
      if (st.isSymbolicLink()) return [`l ${rel} -> ${readlinkSync(join(dir, rel))}`];
      if (st.isDirectory()) return [`d ${rel}`, ...listTree(dir, rel)];
      const content = createHash('sha256')
        .update(readFileSync(join(dir, rel)))
        .digest('hex');
      return [`f ${rel} ${st.mode & 0o777} ${content}`];
    });
}

const outside = () => join(dirs.base, 'outside');
const plantings: Array<[string, (dir: string, tarFile: string) => void, RegExp]> = [
  [
    'an absolute name',
    (dir, tarFile) => {
      writeFileSync(join(outside(), 'planted'), 'planted');
      tarP('-cf', tarFile, dir, join(outside(), 'planted'));
      rmSync(join(outside(), 'planted'));
    },
    /archive member '.*\/outside\/planted' is outside the cache paths/,
  ],
  [
    'a ../ name (tar -P writes it relative to the workspace)',
    (dir, tarFile) => {
      writeFileSync(join(outside(), 'planted'), 'planted');
      tarP('-cf', tarFile, dir, '-C', dirs.workspace, '../outside/planted');
      rmSync(join(outside(), 'planted'));
    },
    /archive member '\.\.\/outside\/planted' is outside the cache paths/,
  ],
  [
    'a symlink out of the path, then a file written through it',
    (dir, tarFile) => {
      symlinkSync(outside(), join(dir, 'link'));
      tarP('-cf', tarFile, dir);
      rmSync(join(dir, 'link'));
      mkdirSync(join(dir, 'link'));
      writeFileSync(join(dir, 'link', 'planted'), 'planted');
      tarP('-rf', tarFile, join(dir, 'link', 'planted'));
    },
    /archive member '.*\/link\/planted' is reached through the archive's symlink '.*\/link'/,
  ],
  [
    // Decoded leniently, \xff and \xfe were both U+FFFD: the file \xfe took the symlink \xff out of the check,
    // \xfd went up through it, \xfc took \xfd out, and a file was written through \xfd into outside/.
    'raw-byte names that are one name once decoded leniently (a symlink dropped from the check)',
    (dir, tarFile) => {
      const [z, w] = [rawPath(`${dir}/`, 0xfd), rawPath(`${dir}/`, 0xfc)];
      const e = join(dir, 'd', 'e');
      mkdirSync(e, { recursive: true });
      symlinkSync('../..', rawPath(`${e}/`, 0xff));
      writeFileSync(rawPath(`${e}/`, 0xfe), '');
      symlinkSync(
        Buffer.concat([Buffer.from('d/e/'), Buffer.from([0xff]), Buffer.from('/../../outside')]),
        z,
      );
      writeFileSync(w, '');
      writeFileSync(join(outside(), 'planted'), 'planted');
      const through = Buffer.concat([z, Buffer.from('/planted')]);
      tarRaw(tarFile, [
        dir,
        join(dir, 'd'),
        e,
        rawPath(`${e}/`, 0xff),
        rawPath(`${e}/`, 0xfe),
        z,
        w,
        through,
      ]);
      rmSync(join(outside(), 'planted'));
    },
    /unreadable archive: a member name or link target is not valid UTF-8/,
  ],
  [
    // Whoever reads it (preseed hashing its disk image) would block forever.
    'a FIFO',
    (dir, tarFile) => {
      execFileSync('mkfifo', [join(dir, 'disk.raw')]);
      tarP('-cf', tarFile, dir);
    },
    /archive member '.*\/disk\.raw' is a FIFO/,
  ],
  [
    'a hard link to a file outside the path',
    (dir, tarFile) => {
      writeFileSync(join(outside(), 'secret'), 'not yours');
      linkSync(join(outside(), 'secret'), join(dir, 'hard'));
      tarP('-cf', tarFile, join(outside(), 'secret'), dir);
      execFileSync('tar', ['-P', '--delete', '-f', tarFile, join(outside(), 'secret')]);
    },
    /archive member '.*\/hard' is a hard link to '.*\/outside\/secret', outside the cache paths/,
  ],
  [
    // Unread, it would go to the library, whose tar -P extracts everything up to the break unchecked.
    'a member the check cannot read as tar does (GNU sparse), before an absolute name',
    (dir, tarFile) => {
      execFileSync('truncate', ['-s', '1M', join(dir, 'sparse')]);
      writeFileSync(join(outside(), 'planted'), 'planted');
      execFileSync('tar', [
        '--format=gnu',
        '--sparse',
        '-P',
        '-cf',
        tarFile,
        dir,
        join(outside(), 'planted'),
      ]);
      rmSync(join(outside(), 'planted'));
    },
    /unreadable archive: unsupported tar member type 'S'/,
  ],
];

/**
 * Saves a small tree under `key` with the library, puts the archive `build` crafts in its place, and checks that
 * a restore refuses it whole: one warning naming `reason`, nothing planted, nothing restored, no library fallback
 * (the library would have extracted the very same archive).
 */
async function expectPlantingRefused(
  key: string,
  build: (dir: string, tarFile: string) => void,
  reason: RegExp,
): Promise<void> {
  rmSync(outside(), { recursive: true, force: true });
  mkdirSync(outside(), { recursive: true });
  const dir = join(dirs.runnerTemp, 'ici-planting');
  rmSync(dir, { recursive: true, force: true });
  await fillTree(dir, 1, MiB);
  await saveWithLibrary([dir], key);
  poison(key, (tarFile) => build(dir, tarFile));
  await laterRun([dirs.runnerTemp]);
  const { host, log } = cliHost();
  const plain = plainDownloads();
  const result = await restoreCache(host, [dir], key);
  expect(readdirSync(outside()).filter((f) => f !== 'secret')).toEqual([]);
  expect(result).toEqual({ hit: false, backend: 'actions' });
  const warnings = log.filter((l) => l.startsWith('warning:'));
  expect(warnings).toHaveLength(1);
  expect(warnings[0]).toMatch(/^warning: Cache entry refused, continuing without it \(actions backend\): /);
  expect(warnings[0]).toMatch(reason);
  expect(existsSync(dir)).toBe(false);
  expect(fallbacks(log)).toEqual([]);
  expect(plainDownloads()).toBe(plain);
}

const fallbacks = (log: string[]) => log.filter((l) => FALLBACK.test(l));
const ranged = () => service.counters.rangedDownloads;
const plainDownloads = () => (service.counters.requests.Download ?? 0) - service.counters.rangedDownloads;

beforeAll(async () => {
  service = await CacheService.start();
  dirs = jobDirs('cache-stream');
});

afterEach(() => service.heal());

afterAll(async () => {
  env.restore();
  await service.stop();
  rmSync(dirs.base, { recursive: true, force: true });
});

describe('streaming restore, cache service v2', () => {
  beforeAll(() => env.use(service.env({ workspace: dirs.workspace, runnerTemp: dirs.runnerTemp })));

  it('restores an entry saved by the real @actions/cache byte-identically, through ranged GETs, with file digests', async () => {
    const dir = join(dirs.runnerTemp, 'ici-tree');
    const digest = await fillTree(dir);
    const fileSha = createHash('sha256')
      .update(readFileSync(join(dir, 'blob-1.bin')))
      .digest('hex');
    await saveWithLibrary([dir], 'tree-key');

    await laterRun([dirs.runnerTemp]);
    const { host, log } = cliHost();
    const before = { ranged: ranged(), plain: plainDownloads() };
    const result = await restoreCache(host, [dir], 'tree-key', [], { fileDigests: true });
    expect({ hit: result.hit, matchedKey: result.matchedKey }).toEqual({ hit: true, matchedKey: 'tree-key' });
    expect(treeDigest(dir)).toBe(digest);
    expect(result.fileDigests?.[join(dir, 'blob-1.bin')]).toBe(`sha256:${fileSha}`);
    expect(fallbacks(log)).toEqual([]);
    // 21 MiB of archive in 4 MiB ranges; the library's single plain GET was never made.
    expect(ranged() - before.ranged).toBeGreaterThanOrEqual(6);
    expect(plainDownloads()).toBe(before.plain);
    expect(log).toContain('Cache restored successfully');
    // No archive was written to RUNNER_TEMP on the way (the library leaves a uuid dir there).
    expect(readdirSync(dirs.runnerTemp)).toEqual(['ici-tree']);
  });

  it('finds a restore-key match and looks up without downloading', async () => {
    const dir = join(dirs.runnerTemp, 'ici-prefix');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'v'), 'one');
    await saveWithLibrary([dir], 'px-Linux-aaa');
    await laterRun([dirs.runnerTemp]);
    const { host, log } = cliHost();
    const downloads = service.counters.requests.Download ?? 0;
    expect(await restoreCache(host, [dir], 'px-Linux-bbb', ['px-Linux-'], { lookupOnly: true })).toEqual({
      hit: false,
      matchedKey: 'px-Linux-aaa',
      backend: 'actions',
    });
    expect(service.counters.requests.Download ?? 0).toBe(downloads);
    expect(await restoreCache(host, [dir], 'px-Linux-bbb', ['px-Linux-'])).toMatchObject({
      matchedKey: 'px-Linux-aaa',
    });
    expect(readFileSync(join(dir, 'v'), 'utf8')).toBe('one');
    expect(log).toContain('Cache hit for restore-key: px-Linux-aaa');
    expect(fallbacks(log)).toEqual([]);
  });

  it('resumes after connections are cut mid-range: the cut ranges are asked for again', async () => {
    const dir = join(dirs.runnerTemp, 'ici-cut');
    const digest = await savedTree(dir, 'cut-key', 2, 6 * MiB);
    const { host, log } = cliHost();
    service.cutDownloads(3, 512 * 1024);
    expect((await restoreCache(host, [dir], 'cut-key')).hit).toBe(true);
    expect(treeDigest(dir)).toBe(digest);
    expect(log.filter((l) => l.startsWith('Retrying bytes '))).toHaveLength(3);
    expect(fallbacks(log)).toEqual([]);
  });

  it('restores over a slow but steady link (3 MiB/s) without a retry or a fallback', async () => {
    const dir = join(dirs.runnerTemp, 'ici-steady');
    const digest = await savedTree(dir, 'steady-key', 1, 4 * MiB);
    const { host, log } = cliHost();
    const rangedBefore = ranged();
    service.limitDownloads(3 * MiB);
    try {
      expect((await restoreCache(host, [dir], 'steady-key')).hit).toBe(true);
    } finally {
      service.limitDownloads(undefined);
    }
    expect(treeDigest(dir)).toBe(digest);
    expect(log.filter((l) => l.startsWith('Retrying bytes '))).toEqual([]);
    expect(fallbacks(log)).toEqual([]);
    expect(ranged()).toBeGreaterThan(rangedBefore);
  });

  it('falls back to the library, with one line, when the signed URL refuses ranges (4xx)', async () => {
    const dir = join(dirs.runnerTemp, 'ici-refused');
    const digest = await savedTree(dir, 'refused-key', 1, 5 * MiB);
    const { host, log } = cliHost();
    service.refuseRanges(403);
    const plain = plainDownloads();
    expect((await restoreCache(host, [dir], 'refused-key')).hit).toBe(true);
    expect(treeDigest(dir)).toBe(digest);
    expect(fallbacks(log)).toEqual([
      'Streaming restore not used (the download URL answered HTTP 403); restoring through @actions/cache.',
    ]);
    expect(plainDownloads()).toBe(plain + 1);
  });

  it('undoes a half-done extraction when zstd | tar meet damaged bytes, then the library restores the entry', async () => {
    const dir = join(dirs.runnerTemp, 'ici-damaged');
    const digest = await savedTree(dir, 'damaged-key', 4, 5 * MiB);
    const { host, log } = cliHost();
    service.damageRangesFrom(12 * MiB);
    expect((await restoreCache(host, [dir], 'damaged-key')).hit).toBe(true);
    expect(treeDigest(dir)).toBe(digest);
    expect(fallbacks(log)).toHaveLength(1);
    expect(fallbacks(log)[0]).toMatch(/\((zstd|tar) exited with \d: /);
  });

  it('leaves nothing half-extracted when the stream breaks and the library cannot restore either', async () => {
    const dir = join(dirs.runnerTemp, 'ici-undo');
    await savedTree(dir, 'undo-key', 4, 5 * MiB);
    // The consumer's dir exists already and holds a file of its own: that must survive, nothing else appear.
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'mine.txt'), 'not from the cache');
    const { host, log } = cliHost();
    service.damageRangesFrom(12 * MiB);
    service.refusePlainDownloads(403);
    expect(await restoreCache(host, [dir], 'undo-key')).toEqual({ hit: false, backend: 'actions' });
    expect(fallbacks(log)).toHaveLength(1);
    expect(readdirSync(dir)).toEqual(['mine.txt']);

    // Without a dir of its own beforehand, not even the dir is left.
    rmSync(dir, { recursive: true });
    expect((await restoreCache(host, [dir], 'undo-key')).hit).toBe(false);
    expect(existsSync(dir)).toBe(false);
  });

  it('falls back when the service does not know GetCacheEntryDownloadURL (twirp 404)', async () => {
    const dir = join(dirs.runnerTemp, 'ici-unknown');
    const { host, log } = cliHost();
    service.fail(['GetCacheEntryDownloadURL'], 404);
    expect((await restoreCache(host, [dir], 'unknown-key')).hit).toBe(false);
    expect(fallbacks(log)).toEqual([
      'Streaming restore not used (GetCacheEntryDownloadURL answered HTTP 404); restoring through @actions/cache.',
    ]);
  });

  it('reports an outage of the lookup as an unavailable cache, without a second try through the library', async () => {
    const dir = join(dirs.runnerTemp, 'ici-outage');
    const { host, log } = cliHost();
    service.fail(['GetCacheEntryDownloadURL'], 503);
    const before = service.counters.requests.GetCacheEntryDownloadURL ?? 0;
    expect(await restoreCache(host, [dir], 'outage-key')).toEqual({ hit: false, backend: 'actions' });
    expect(log.some((l) => /^warning: Cache unavailable.*HTTP 503 \(after 3 attempts\)/.test(l))).toBe(true);
    expect((service.counters.requests.GetCacheEntryDownloadURL ?? 0) - before).toBe(3);
    expect(fallbacks(log)).toEqual([]);
  });

  it('gives up after IMAGE_CI_CACHE_TIMEOUT in the middle of a slow download and undoes it', async () => {
    const dir = join(dirs.runnerTemp, 'ici-slow');
    await savedTree(dir, 'slow-key', 1, 8 * MiB);
    const { host, log } = cliHost();
    service.limitDownloads(2 * MiB);
    process.env.IMAGE_CI_CACHE_TIMEOUT = '2s';
    try {
      expect(await restoreCache(host, [dir], 'slow-key')).toEqual({ hit: false, backend: 'actions' });
    } finally {
      delete process.env.IMAGE_CI_CACHE_TIMEOUT;
      service.limitDownloads(undefined);
    }
    expect(log.some((l) => /^warning: Cache unavailable.*timed out after 2\.0 s/.test(l))).toBe(true);
    expect(existsSync(dir)).toBe(false);
  });

  it('a path whose last member is a hard link (not the file hashed before) gets no digest: the caller reads it', async () => {
    const dir = join(dirs.runnerTemp, 'ici-relinked');
    mkdirSync(dir, { recursive: true });
    const image = join(dir, 'image.zst');
    const record = join(dir, 'image.json');
    writeFileSync(image, 'the real disk');
    writeFileSync(record, '{"fileDigest":"sha256 of the real disk"}');
    await saveWithLibrary([image, record], 'relinked-key');
    // The real disk and its record, then the disk's path again: a hard link to other bytes.
    poison('relinked-key', (tarFile) => {
      tarP('-cf', tarFile, image, record);
      rmSync(image);
      linkSync(record, image);
      tarP('-rf', tarFile, record, image);
    });
    await laterRun([dirs.runnerTemp]);
    const { host, log } = cliHost();
    const result = await restoreCache(host, [image, record], 'relinked-key', [], { fileDigests: true });
    expect(result.hit).toBe(true);
    expect(fallbacks(log)).toEqual([]);
    expect(readFileSync(image, 'utf8')).toBe(readFileSync(record, 'utf8'));
    // The digest of 'the real disk' would vouch for bytes the path no longer holds.
    const sha = (text: string) => `sha256:${createHash('sha256').update(text).digest('hex')}`;
    expect(result.fileDigests?.[image]).toBeUndefined();
    expect(result.fileDigests?.[record]).toBe(sha(readFileSync(record, 'utf8')));
  });

  it('never reports a digest for bytes a later member put there under another raw-byte name (U+FFFD alias)', async () => {
    const dir = join(dirs.runnerTemp, 'ici-alias');
    const image = join(dir, 'disk.raw');
    mkdirSync(dir, { recursive: true });
    writeFileSync(image, 'GOOD');
    await saveWithLibrary([dir], 'alias-key');
    // \xff is a symlink to the directory, \xfe (one name with it once decoded leniently) took it out of the
    // check, and disk.raw is written again through \xff after its digest was taken.
    poison('alias-key', (tarFile) => {
      const alias = rawPath(`${dir}/`, 0xff);
      symlinkSync('.', alias);
      writeFileSync(rawPath(`${dir}/`, 0xfe), '');
      tarRaw(tarFile, [dir, alias, rawPath(`${dir}/`, 0xfe), image]);
      writeFileSync(image, 'EVIL');
      tarRaw(tarFile, [Buffer.concat([alias, Buffer.from('/disk.raw')])], '-rf');
    });
    await laterRun([dirs.runnerTemp]);
    const { host, log } = cliHost();
    const result = await restoreCache(host, [dir], 'alias-key', [], { fileDigests: true });
    // The old code vouched for GOOD with the disk holding EVIL; now nothing is vouched for, nothing is there.
    const digestOf = (path: string) =>
      `sha256:${createHash('sha256').update(readFileSync(path)).digest('hex')}`;
    expect({
      vouched: result.fileDigests?.[image],
      onDisk: existsSync(image) ? digestOf(image) : undefined,
    }).toEqual({ vouched: undefined, onDisk: undefined });
    expect(result).toEqual({ hit: false, backend: 'actions' });
    expect(log.filter((l) => l.startsWith('warning:'))).toEqual([
      expect.stringMatching(/Cache entry refused.*not valid UTF-8/),
    ]);
    expect(existsSync(dir)).toBe(false);
    expect(fallbacks(log)).toEqual([]);
  });

  it('restores symlinks wherever they point, byte-identically: a venv (bin/python -> /usr/bin/python3), lib64 -> lib', async () => {
    const dir = join(dirs.runnerTemp, 'ici-venv');
    mkdirSync(join(dir, 'bin'), { recursive: true });
    mkdirSync(join(dir, 'lib', 'python3', 'site-packages'), { recursive: true });
    writeFileSync(join(dir, 'lib', 'python3', 'site-packages', 'mod.py'), 'x = 1\n');
    writeFileSync(join(dir, 'bin', 'activate'), '# venv\n', { mode: 0o755 });
    symlinkSync('/usr/bin/python3', join(dir, 'bin', 'python'));
    symlinkSync('python', join(dir, 'bin', 'python3'));
    symlinkSync('lib', join(dir, 'lib64'));
    // Goes through the archive's own lib64 symlink, then up and out of the path and back.
    symlinkSync('../lib64/python3/site-packages/mod.py', join(dir, 'bin', 'mod.py'));
    symlinkSync('../ici-venv/lib', join(dir, 'up-and-over'));
    symlinkSync('not/there', join(dir, 'dangling'));
    const before = listTree(dir);
    await saveWithLibrary([dir], 'venv-key');
    await laterRun([dirs.runnerTemp]);
    const { host, log } = cliHost();
    const result = await restoreCache(host, [dir], 'venv-key', [], { fileDigests: true });
    expect(log.filter((l) => l.startsWith('warning:'))).toEqual([]);
    expect(result.hit).toBe(true);
    expect(listTree(dir)).toEqual(before);
    expect(fallbacks(log)).toEqual([]);
    // Digests only for regular files, never for a symlink's path.
    expect(Object.keys(result.fileDigests ?? {}).sort()).toEqual(
      [join(dir, 'bin', 'activate'), join(dir, 'lib', 'python3', 'site-packages', 'mod.py')].sort(),
    );
  });

  it('keeps an entry refused when its undo meets a directory the archive locked (mode 000, non-root runner): no library fallback', async () => {
    const user = testUser();
    const dir = join(dirs.runnerTemp, 'ici-locked');
    const outside = join(dirs.base, 'outside-locked');
    mkdirSync(dir, { recursive: true });
    mkdirSync(outside, { recursive: true });
    writeFileSync(join(dir, 'seed'), 'seed');
    await saveWithLibrary([dir], 'locked-key');
    poison('locked-key', (tarFile) => {
      mkdirSync(join(dir, 'locked'));
      writeFileSync(join(dir, 'locked', 'f'), 'f');
      chmodSync(join(dir, 'locked'), 0);
      // tar gives a directory its mode once it reads a member outside it: this one reaches tar before the refusal.
      writeFileSync(join(dir, 'big'), randomBytes(2 * MiB));
      writeFileSync(join(outside, 'planted'), 'planted');
      const members = [dir, join(dir, 'locked'), join(dir, 'locked', 'f'), join(dir, 'big')];
      tarP('--no-recursion', '-cf', tarFile, ...members, join(outside, 'planted'));
      rmSync(join(outside, 'planted'));
    });
    await laterRun([dirs.runnerTemp]);
    // A runner's user (root opens any directory) owning the job's directories; the service's files readable.
    const opened = [dirs.base, service.root];
    opened.forEach((d) => chmodSync(d, 0o755));
    [dirs.runnerTemp, outside].forEach((d) => chownSync(d, user.uid, user.gid));
    const { host, log } = cliHost();
    const { seteuid, setegid } = process;
    if (!seteuid || !setegid) throw new Error('switching the effective user needs a POSIX process');
    setegid(user.gid);
    seteuid(user.uid);
    let result;
    try {
      result = await restoreCache(host, [dir], 'locked-key');
    } finally {
      seteuid(0);
      setegid(0);
      opened.forEach((d) => chmodSync(d, 0o700));
    }
    expect(result).toEqual({ hit: false, backend: 'actions' });
    expect(log.filter((l) => l.startsWith('warning:'))).toEqual([
      expect.stringMatching(/Cache entry refused.*outside-locked\/planted' is outside the cache paths$/),
    ]);
    expect(fallbacks(log)).toEqual([]);
    expect(readdirSync(outside)).toEqual([]);
    expect(existsSync(dir)).toBe(false);
  });

  it('refuses an entry the service matched under a key that was not asked for (no download, no library)', async () => {
    const dir = join(dirs.runnerTemp, 'ici-forged');
    await savedTree(dir, 'forged-Linux-aaa', 1, MiB);
    const { host, log } = cliHost();
    const downloads = service.counters.requests.Download ?? 0;
    service.forgeMatchedKey(() => 'someone-elses-key');
    expect(await restoreCache(host, [dir], 'forged-Linux-bbb', ['forged-Linux-'])).toEqual({
      hit: false,
      backend: 'actions',
    });
    expect(log.filter((l) => l.startsWith('warning:'))).toEqual([
      'warning: Cache entry refused, continuing without it (actions backend): the cache service answered with the key "someone-elses-key", which is neither the key nor a prefix match of a restore key',
    ]);
    expect(service.counters.requests.Download ?? 0).toBe(downloads);
    expect(fallbacks(log)).toEqual([]);
    expect(existsSync(dir)).toBe(false);
  });

  it('refuses a hit the service names no key for (the library would extract its archive unchecked, then report a miss)', async () => {
    service.forgeMatchedKey(() => '');
    await expectPlantingRefused('keyless', plantings[0]![1], /the cache service answered with no key$/);
  });

  describe('an entry with a member outside the cache paths is refused whole: nothing planted, nothing restored, no library fallback', () => {
    it.each(plantings)('%s', (_what, build, reason) =>
      expectPlantingRefused(`planting-${plantings.findIndex((c) => c[1] === build)}`, build, reason),
    );
  });

  it('gives zstd and tar an environment without the action inputs and credentials', async () => {
    const dir = join(dirs.runnerTemp, 'ici-env');
    await savedTree(dir, 'env-key', 1, MiB);
    // Shims on PATH record the environment each tool gets, then run the real one.
    const shims = join(dirs.base, 'env-shims');
    const dumps = join(dirs.base, 'env-dumps');
    mkdirSync(shims, { recursive: true });
    mkdirSync(dumps, { recursive: true });
    for (const tool of ['zstd', 'tar']) {
      const real = await which(tool, true);
      writeFileSync(join(shims, tool), `#!/bin/sh\nenv > ${dumps}/${tool}.$$\nexec ${real} "$@"\n`);
      chmodSync(join(shims, tool), 0o755);
    }
    const saved = { PATH: process.env.PATH, INPUT_PASSWORD: process.env.INPUT_PASSWORD };
    process.env.PATH = `${shims}:${process.env.PATH}`;
    process.env.INPUT_PASSWORD = 'input-password-value';
    try {
      const { host } = cliHost();
      expect((await restoreCache(host, [dir], 'env-key')).hit).toBe(true);
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
    const seen = readdirSync(dumps).map((f) => [f.split('.')[0], readFileSync(join(dumps, f), 'utf8')]);
    // tar runs twice: `tar --version` tells GNU tar (which gets 1 MiB records), then the extraction.
    expect(seen.map(([tool]) => tool).sort()).toEqual(['tar', 'tar', 'zstd']);
    for (const [, env] of seen) {
      expect(env).toContain(`PATH=${shims}:`);
      expect(env).not.toMatch(/^INPUT_/m);
      expect(env).not.toContain(service.token);
    }
  });

  it.each([
    ['an absurd size (more than the disk holds): stops at the first answer', () => 1e13, 1],
    ['a size its own answers contradict: stops without retrying', (real: number) => real + 64 * MiB, 9],
  ])('a signed URL that claims %s, and the library restores', async (_what, claim, maxRanged) => {
    const dir = join(dirs.runnerTemp, 'ici-claim');
    rmSync(dir, { recursive: true, force: true });
    const digest = await fillTree(dir, 1, 7 * MiB);
    const key = `claim-${maxRanged}`;
    await saveWithLibrary([dir], key);
    await laterRun([dirs.runnerTemp]);
    const { host, log } = cliHost();
    const before = ranged();
    service.claimArchiveSize(claim(service.list().find((e) => e.key === key)!.sizeBytes));
    expect((await restoreCache(host, [dir], key)).hit).toBe(true);
    expect(treeDigest(dir)).toBe(digest);
    expect(ranged() - before).toBeLessThanOrEqual(maxRanged);
    expect(log.filter((l) => l.startsWith('Retrying'))).toEqual([]);
    expect(fallbacks(log)).toHaveLength(1);
  });

  it("never lets the library's output start a workflow command: a forged key with command lines is refused and undone", async () => {
    const dir = join(dirs.runnerTemp, 'ici-lib-forged');
    await savedTree(dir, 'lib-forged-key', 1, MiB);
    const { host, log } = cliHost();
    // The library logs the key it restored: these lines would reach the runner as commands. The stream's own
    // lookup gets the true key, and its ranges are refused: the restore goes on through the library.
    let lookups = 0;
    service.forgeMatchedKey((asked) =>
      lookups++ === 0 ? asked : `${asked}\n::set-output name=pwned::1\n::stop-commands::tok`,
    );
    service.refuseRanges(403);
    const stdout: string[] = [];
    const write = process.stdout.write;
    process.stdout.write = ((chunk: string | Uint8Array) => stdout.push(String(chunk)) > 0) as typeof write;
    let result;
    try {
      result = await restoreCache(host, [dir], 'lib-forged-key');
    } finally {
      process.stdout.write = write;
    }
    expect(
      stdout
        .join('')
        .split('\n')
        .filter((l) => l.startsWith('::')),
    ).toEqual([]);
    expect(result).toEqual({ hit: false, backend: 'actions' });
    expect(fallbacks(log)).toEqual([
      'Streaming restore not used (the download URL answered HTTP 403); restoring through @actions/cache.',
    ]);
    // Logged as text, between stop-commands markers.
    expect(log.join('\n')).toMatch(/::stop-commands::(\w+)\n::set-output name=pwned::1\n::\1::/);
    expect(log.filter((l) => l.startsWith('warning:'))).toEqual([
      expect.stringMatching(
        /^warning: Cache entry refused, .*: @actions\/cache restored the key .*which holds control characters$/,
      ),
    ]);
    expect(existsSync(dir)).toBe(false);
  });

  it("restores remote-build-env's cache mounts through the stream", async () => {
    // Saved from the stage dir; restored through it into the service's cache-mount dir (names do not matter here).
    const stage = join(dirs.runnerTemp, 'ici-rbe');
    const mounts = join(stage, 'buildah-cache');
    const digest = await savedTree(mounts, 'rbe-mounts-Linux-X64-0123456789abcdef', 1, 6 * MiB);
    const live = join(dirs.runnerTemp, 'ici-svc', 'buildah-cache');
    mkdirSync(dirname(live));
    const { host, log } = cliHost();
    const before = ranged();
    const state = await restoreCacheMounts(host, { stage, live }, 'rbe-mounts', []);
    expect(state.matchedKey).toBe('rbe-mounts-Linux-X64-0123456789abcdef');
    expect(treeDigest(live)).toBe(digest);
    expect(ranged()).toBeGreaterThan(before);
    expect(fallbacks(log)).toEqual([]);
  });

  it('finishes when tar exits at the end-of-archive block before zstd closes its output: no hang, no fallback', async () => {
    const dir = join(dirs.runnerTemp, 'ici-tar-first');
    const digest = await savedTree(dir, 'tar-first-key', 1, 3 * MiB);
    // zstd keeps its output open until tar has exited and been reaped (GNU tar does not wait for the end of its
    // input): tar's stdin is then destroyed before the relay sees the end of zstd's output. GNU tar stops at
    // the end-of-archive block only once it has read the record holding it: with the stream's 1 MiB records
    // that is the end of this small archive's input, so the shim gives tar its default 10 KiB records back.
    const pidFile = join(dirs.base, 'tar-first.pid');
    const { host, log } = cliHost();
    const result = await withShims(
      join(dirs.base, 'tar-first-shims'),
      {
        tar: `[ "$1" = -xf ] && echo $$ > ${pidFile}\nexec "$REAL" "$@" --blocking-factor=20`,
        zstd: [
          '"$REAL" "$@"; rc=$?',
          `[ "$1" = -d ] && { until [ -s ${pidFile} ]; do sleep 0.01; done; while kill -0 $(cat ${pidFile}) 2>/dev/null; do sleep 0.01; done; }`,
          'exit $rc',
        ].join('\n'),
      },
      () => restoreCache(host, [dir], 'tar-first-key'),
    );
    expect(result.hit).toBe(true);
    expect(treeDigest(dir)).toBe(digest);
    expect(fallbacks(log)).toEqual([]);
  });

  it('ends tar at IMAGE_CI_CACHE_TIMEOUT when it hangs after taking the whole stream (a stuck disk): nothing left running', async () => {
    const dir = join(dirs.runnerTemp, 'ici-tar-hangs');
    await savedTree(dir, 'tar-hangs-key', 1, 1 * MiB);
    const pidFile = join(dirs.base, 'tar-hangs.pid');
    const { host, log } = cliHost();
    process.env.IMAGE_CI_CACHE_TIMEOUT = '2s';
    try {
      // The download is over when tar stops: only the deadline is left to end the wait for it.
      const result = await withShims(
        join(dirs.base, 'tar-hangs-shims'),
        {
          tar: `if [ "$2" = - ]; then cat > /dev/null; echo $$ > ${pidFile}; exec sleep 600; fi\nexec "$REAL" "$@"`,
        },
        () => restoreCache(host, [dir], 'tar-hangs-key'),
      );
      expect(result).toEqual({ hit: false, backend: 'actions' });
    } finally {
      delete process.env.IMAGE_CI_CACHE_TIMEOUT;
    }
    expect(log.some((l) => /^warning: Cache unavailable.*timed out after 2\.0 s/.test(l))).toBe(true);
    const tarPid = Number(readFileSync(pidFile, 'utf8'));
    expect(() => process.kill(tarPid, 0)).toThrow(expect.objectContaining({ code: 'ESRCH' }));
    expect(existsSync(dir)).toBe(false);
  }, 30_000);

  it('leaves no tar running when zstd cannot be started (spawn throws ELOOP): the library is asked instead', async () => {
    const dir = join(dirs.runnerTemp, 'ici-zstd-unstartable');
    await savedTree(dir, 'zstd-unstartable-key', 1, 1 * MiB);
    // zstd was found when the stream asked (once per process); by the time it is started, the name on PATH is a
    // symlink loop, which node's spawn throws on at once instead of reporting it as the child's error.
    await compressionMethod();
    const pidFile = join(dirs.base, 'zstd-unstartable.pid');
    const { host, log } = cliHost();
    await withShims(
      join(dirs.base, 'zstd-unstartable-shims'),
      { tar: `[ "$2" = - ] && echo $$ > ${pidFile}\nexec "$REAL" "$@"` },
      async () => {
        const loop = join(dirs.base, 'zstd-unstartable-shims', 'zstd');
        symlinkSync(loop, loop);
        // The library's fallback meets the loop too, and @actions/io tells the console so.
        const quiet = jest.spyOn(console, 'log').mockImplementation(() => undefined);
        try {
          return await restoreCache(host, [dir], 'zstd-unstartable-key');
        } finally {
          quiet.mockRestore();
        }
      },
    );
    expect(fallbacks(log)[0]).toMatch(
      /^Streaming restore not used \(zstd could not be started: spawn ELOOP\)/,
    );
    // The stream's tar was started, and is gone (killed and reaped), not waiting for input that never comes.
    const tarPid = Number(readFileSync(pidFile, 'utf8'));
    expect(() => process.kill(tarPid, 0)).toThrow(expect.objectContaining({ code: 'ESRCH' }));
  });

  it('does not report a restore when tar is killed by a signal after taking the whole stream; the library restores', async () => {
    const dir = join(dirs.runnerTemp, 'ici-tar-killed');
    const digest = await savedTree(dir, 'tar-killed-key', 1, 3 * MiB);
    const { host, log } = cliHost();
    // The streaming restore's tar (`-xf -`) reads everything, then dies as the OOM killer would kill it; the
    // library's tar (`-xf <archive>`) is the real one.
    const result = await withShims(
      join(dirs.base, 'tar-killed-shims'),
      { tar: 'if [ "$2" = - ]; then cat > /dev/null; kill -KILL $$; fi\nexec "$REAL" "$@"' },
      () => restoreCache(host, [dir], 'tar-killed-key'),
    );
    expect(result.hit).toBe(true);
    expect(treeDigest(dir)).toBe(digest);
    expect(fallbacks(log)).toEqual([
      'Streaming restore not used (tar was killed by SIGKILL); restoring through @actions/cache.',
    ]);
  });
});

describe('streaming restore, cache service v1 (GHES)', () => {
  const dir = () => join(dirs.runnerTemp, 'ici-v1');
  let digest: string;
  const v1Calls = () =>
    ['V1Reserve', 'V1Upload', 'V1Commit'].map((c) => service.counters.requests[c as CacheCall] ?? 0);

  beforeAll(async () => {
    env.use(service.envV1({ workspace: dirs.workspace, runnerTemp: dirs.runnerTemp }));
    digest = await fillTree(dir(), 1, 5 * MiB);
    const before = v1Calls();
    const { host } = cliHost();
    // Saved through our wrapper: the library's own v1 save (reserve, PATCH chunks, commit).
    expect((await saveCache(host, [dir()], 'v1-key')).outcome).toBe('saved');
    expect(v1Calls().map((n, i) => n - before[i]!)).toEqual([1, 1, 1]);
  });

  /** A later job's restore of the entry the library saved over v1, with what it logged. */
  async function restoreV1(): Promise<string[]> {
    await laterRun([dirs.runnerTemp]);
    const { host, log } = cliHost();
    expect((await restoreCache(host, [dir()], 'v1-key')).hit).toBe(true);
    expect(treeDigest(dir())).toBe(digest);
    return log;
  }

  it('restores an entry the real @actions/cache saved over v1 byte-identically, streamed through ranged GETs (not the library)', async () => {
    const before = {
      ranged: ranged(),
      plain: plainDownloads(),
      lookups: service.counters.requests.V1Lookup ?? 0,
    };
    const log = await restoreV1();
    expect(fallbacks(log)).toEqual([]);
    expect(log.some((l) => /^Cache Size: .* streamed into tar in /.test(l))).toBe(true);
    expect(service.counters.requests.V1Lookup! - before.lookups).toBe(1);
    // 5 MiB of archive in 4 MiB ranges; the library's single plain GET was never made, nor its temp archive.
    expect(ranged() - before.ranged).toBe(2);
    expect(plainDownloads()).toBe(before.plain);
    expect(readdirSync(dirs.runnerTemp)).toEqual(['ici-v1']);
  });

  it('finds a restore-key match over v1 and looks up without downloading; a miss (204) stays a miss', async () => {
    const { host, log } = cliHost();
    const downloads = service.counters.requests.Download ?? 0;
    expect(await restoreCache(host, [dir()], 'v1-other', ['v1-'], { lookupOnly: true })).toEqual({
      hit: false,
      matchedKey: 'v1-key',
      backend: 'actions',
    });
    expect(service.counters.requests.Download ?? 0).toBe(downloads);
    expect(log).toContain('Cache hit for restore-key: v1-key');
    // A miss (204) is a miss, not a reason to ask the library.
    expect(await restoreCache(host, [dir()], 'v2-key', ['v2-'])).toEqual({ hit: false, backend: 'actions' });
    expect(fallbacks(log)).toEqual([]);
  });

  it('refuses an entry with a member outside the cache paths over v1 (the library would extract it with tar -P)', () =>
    expectPlantingRefused('v1-planting', plantings[0]![1], plantings[0]![2]));

  it('refuses a v1 hit without a cacheKey (the library would extract its archive unchecked, then report a miss)', async () => {
    service.forgeMatchedKey(() => '');
    await expectPlantingRefused('v1-keyless', plantings[0]![1], /the cache service answered with no key$/);
  });

  it.each([
    [403, /^the download URL answered HTTP 403$/],
    [503, /HTTP 503/],
  ])(
    'falls back to the library, with one line, when the v1 archive URL answers ranged GETs with %i',
    async (status, reason) => {
      service.refuseRanges(status);
      const plain = plainDownloads();
      const log = await restoreV1();
      expect(fallbacks(log)).toHaveLength(1);
      expect(fallbacks(log)[0]!.match(FALLBACK)![1]).toMatch(reason);
      expect(plainDownloads()).toBe(plain + 1);
    },
  );

  it('asks again when a v1 answer breaks off mid-body (the network, not an unknown answer); after 3 breaks the cache is unavailable, the library not asked', async () => {
    const lookups = () => service.counters.requests.V1Lookup ?? 0;
    service.cutV1Answers(1);
    let before = lookups();
    const log = await restoreV1();
    expect(fallbacks(log)).toEqual([]);
    expect(log.some((l) => /^Cache Size: .* streamed into tar in /.test(l))).toBe(true);
    expect(lookups() - before).toBe(2);

    service.cutV1Answers(3);
    before = lookups();
    const { host, log: broken } = cliHost();
    expect(await restoreCache(host, [dir()], 'v1-key')).toEqual({ hit: false, backend: 'actions' });
    expect(fallbacks(broken)).toEqual([]);
    expect(broken.filter((l) => l.startsWith('warning:'))).toEqual([
      expect.stringMatching(
        /^warning: Cache unavailable.*getCacheEntry: the answer broke off: .*\(after 3 attempts\)/,
      ),
    ]);
    // Three tries of the stream's own; the library (no timeout of its own) was not sent to the same service.
    expect(lookups() - before).toBe(3);
  });

  it('refuses a v1 cacheKey that was not asked for, control characters and all (no download, no library)', async () => {
    service.forgeMatchedKey(() => 'v1-key\n::error::forged');
    const downloads = service.counters.requests.Download ?? 0;
    const { host, log } = cliHost();
    expect(await restoreCache(host, [dir()], 'v1-key')).toEqual({ hit: false, backend: 'actions' });
    expect(log.filter((l) => l.startsWith('warning:'))).toEqual([
      'warning: Cache entry refused, continuing without it (actions backend): the cache service answered with the key "v1-key\\n::error::forged", which holds control characters',
    ]);
    expect(log.filter((l) => l.startsWith('::'))).toEqual([]);
    expect(service.counters.requests.Download ?? 0).toBe(downloads);
    expect(fallbacks(log)).toEqual([]);
  });

  it('stops reading a v1 answer past 1 MiB and reports the cache unavailable, without the library (which would read it all)', async () => {
    service.padV1Answers(2 * MiB);
    const before = service.counters.requests.V1Lookup ?? 0;
    await laterRun([dirs.runnerTemp]);
    const { host, log } = cliHost();
    expect(await restoreCache(host, [dir()], 'v1-key')).toEqual({ hit: false, backend: 'actions' });
    expect(log.filter((l) => l.startsWith('warning:'))).toEqual([
      expect.stringMatching(/^warning: Cache unavailable.*: getCacheEntry answered more than 1 MiB$/),
    ]);
    expect(fallbacks(log)).toEqual([]);
    expect(service.counters.requests.V1Lookup! - before).toBe(1);
  });

  it('looks up as the library does when ACTIONS_CACHE_URL holds a user and password (sent by neither, never logged)', async () => {
    const v1 = service.envV1({ workspace: dirs.workspace, runnerTemp: dirs.runnerTemp });
    env.use({ ...v1, ACTIONS_CACHE_URL: service.url.replace('http://', 'http://runner:s3cret@') });
    try {
      const seen = service.v1Lookups.length;
      const log = await restoreV1();
      expect(fallbacks(log)).toEqual([]);
      expect(log.some((l) => /^Cache Size: .* streamed into tar in /.test(l))).toBe(true);
      expect(log.filter((l) => l.includes('s3cret'))).toEqual([]);
      expect(service.v1Lookups.slice(seen).map((l) => l.authorization)).toEqual([`Bearer ${service.token}`]);
    } finally {
      env.use(v1);
    }
  });

  it('follows a v1 archive URL that redirects (302), as the library does: streamed and checked, not handed to the library', async () => {
    service.redirectDownloads();
    const plain = plainDownloads();
    const log = await restoreV1();
    expect(fallbacks(log)).toEqual([]);
    expect(log.some((l) => /^Cache Size: .* streamed into tar in /.test(l))).toBe(true);
    expect(plainDownloads()).toBe(plain);
  });

  it('refuses a poisoned v1 entry behind a redirecting archive URL (the library would follow it and extract with tar -P)', async () => {
    service.redirectDownloads();
    await expectPlantingRefused('v1-redirected', plantings[0]![1], plantings[0]![2]);
  });

  it('falls back to the library, with one line, on a v1 lookup answer it does not know (HTTP 203); both asked alike', async () => {
    service.answerV1HitsWith(203);
    const seen = service.v1Lookups.length;
    await laterRun([dirs.runnerTemp]);
    const { host, log } = cliHost();
    expect((await restoreCache(host, [dir()], 'v1-key', ['v1-k', 'v1-'])).hit).toBe(true);
    expect(treeDigest(dir())).toBe(digest);
    expect(fallbacks(log)).toEqual([
      'Streaming restore not used (getCacheEntry answered HTTP 203); restoring through @actions/cache.',
    ]);
    // The stream's lookup, then the library's: the same keys, version, Accept header and token, byte for byte.
    const [ours, library] = service.v1Lookups.slice(seen);
    expect(service.v1Lookups.length - seen).toBe(2);
    expect(ours).toEqual(library);
    expect(ours!.path).toContain(`keys=${encodeURIComponent('v1-key,v1-k,v1-')}&version=`);
  });
});
