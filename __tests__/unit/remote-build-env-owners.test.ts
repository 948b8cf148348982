/**
 * The owners manifest of rootless cache mounts (owners.ts). These tests run as root, where the manifest's helper
 * runs directly instead of through `podman unshare` (the rootless path is the e2e test
 * remote-build-env-rootless.test.ts): same script, same checks.
 */
import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { mkdtempSync } from 'node:fs';
import { chmod, lchown, lstat, mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { restoreCacheMounts } from '../../src/actions/remote-build-env/cache-mounts.js';
import { fingerprintDir } from '../../src/actions/remote-build-env/fingerprint.js';
import {
  OWNERS_FILE,
  readOwners,
  restoreOwners,
  takeOwnership,
} from '../../src/actions/remote-build-env/owners.js';
import { CACHE_DIR_ENV } from '../../src/core/cache.js';
import { saveToDirCache } from '../../src/core/cache-dir.js';
import { cliHost } from '../support/cache-files.js';

let work: string;
let dir: string;

beforeEach(async () => {
  work = mkdtempSync(join(tmpdir(), 'ici-own-'));
  dir = join(work, 'buildah-cache');
  await mkdir(join(dir, 'u/private'), { recursive: true });
  await writeFile(join(dir, 'u/private/f'), 'x');
  await symlink('f', join(dir, 'u/private/link'));
  await chmod(join(dir, 'u/private/f'), 0o640);
  await chmod(join(dir, 'u/private'), 0o750);
  for (const p of ['u', 'u/private', 'u/private/f', 'u/private/link']) await lchown(join(dir, p), 1000, 1001);
});

afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

async function ownerOf(path: string): Promise<string> {
  const info = await lstat(path);
  return `${info.uid}:${info.gid} ${(info.mode & 0o7777).toString(8)}`;
}

describe('remote-build-env cache-mount owners', () => {
  it('records owners and modes, hands the tree over with owner access, and puts them back', async () => {
    await takeOwnership(dir);
    expect(await ownerOf(join(dir, 'u/private'))).toBe('0:0 750');
    expect(await ownerOf(join(dir, 'u/private/f'))).toBe('0:0 640');
    expect((await lstat(join(dir, 'u/private/link'))).uid).toBe(0);
    const owners = (await readOwners(dir))!;
    expect(owners.get('u/private/f')).toEqual({ uid: 1000, gid: 1001, mode: 0o640 });
    const fingerprint = await fingerprintDir(dir, owners);
    // What tar's umask does to modes on a restore does not count: the recorded modes do.
    await chmod(join(dir, 'u/private'), 0o700);
    expect(await fingerprintDir(dir, owners)).toBe(fingerprint);

    await restoreOwners(dir, owners);
    expect(await ownerOf(join(dir, 'u/private'))).toBe('1000:1001 750');
    expect(await ownerOf(join(dir, 'u/private/f'))).toBe('1000:1001 640');
    expect((await lstat(join(dir, 'u/private/link'))).uid).toBe(1000);
    expect(await readOwners(dir)).toBeUndefined();
  });

  it('a planted manifest touches nothing outside the tree, follows no symlink and sets no setuid bit', async () => {
    const outside = join(work, 'outside');
    await writeFile(outside, 'host file');
    await chmod(outside, 0o600);
    await symlink(outside, join(dir, 'u/out'));
    await restoreOwners(
      dir,
      new Map([
        ['../outside', { uid: 7, gid: 7, mode: 0o777 }],
        ['u/out', { uid: 7, gid: 7, mode: 0o777 }],
        ['u/private/f', { uid: 5, gid: 5, mode: 0o6755 }],
      ]),
    );
    expect(await ownerOf(outside)).toBe('0:0 600');
    expect((await lstat(join(dir, 'u/out'))).uid).toBe(7);
    expect(await ownerOf(join(dir, 'u/private/f'))).toBe('5:5 755');

    await writeFile(join(dir, OWNERS_FILE), JSON.stringify([['u/private/f', 0, 0, 0o4755]]));
    expect((await readOwners(dir))!.get('u/private/f')).toEqual({ uid: 0, gid: 0, mode: 0o755 });
    for (const bad of ['{"u": 1}', '[["u", -1, 0, 0]]', '[["u", 0, 0]]', '[[1, 0, 0, 0]]']) {
      await writeFile(join(dir, OWNERS_FILE), bad);
      await expect(readOwners(dir)).rejects.toThrow(`${OWNERS_FILE} holds`);
    }
  });

  // The helper script runs as root; a local process may swap an entry for a symlink out of the tree between the
  // script's look at it and its chown/chmod. A preload makes that swap happen right after the script's first
  // look at the named entry (lstat or open), so the race is hit every time.
  it.each([
    ['a file swapped for a symlink to a host file', 'u/private/f'],
    ['a directory swapped for a symlink to a host directory', 'u'],
  ])('apply and record touch nothing outside the tree when %s mid-walk', async (_, entry) => {
    const owners = new Map([
      ['u', { uid: 1000, gid: 1001, mode: 0o750 }],
      ['u/private', { uid: 1000, gid: 1001, mode: 0o750 }],
      ['u/private/f', { uid: 1000, gid: 1001, mode: 0o640 }],
    ]);
    const host = join(work, 'host');
    await mkdir(join(host, 'private'), { recursive: true });
    await writeFile(join(host, 'private/f'), 'host file');
    for (const p of ['', 'private', 'private/f']) await chmod(join(host, p), 0o755);
    const target = entry === 'u' ? host : join(host, 'private/f');
    const preload = join(work, 'swap.cjs');
    await writeFile(
      preload,
      `const fs = require('node:fs');
const path = require('node:path');
const victim = ${JSON.stringify(join(dir, entry))};
let swapped = false;
for (const name of ['lstatSync', 'openSync']) {
  const real = fs[name];
  fs[name] = function (p, ...rest) {
    const result = real.call(this, p, ...rest);
    // The script names entries in bytes (Buffer paths).
    const name = Buffer.isBuffer(p) ? p.toString() : p;
    if (!swapped && typeof name === 'string' && path.basename(name) === path.basename(victim)) {
      swapped = true;
      fs.renameSync(victim, victim + '.moved');
      fs.symlinkSync(${JSON.stringify(target)}, victim);
    }
    return result;
  };
}
`,
    );
    const saved = process.env.NODE_OPTIONS;
    process.env.NODE_OPTIONS = `--require ${preload}`;
    try {
      await restoreOwners(dir, owners);
      expect((await lstat(join(dir, entry))).isSymbolicLink()).toBe(true);
      // Back as it was, for post's record to meet the same swap.
      await rm(join(dir, entry));
      await rename(join(dir, `${entry}.moved`), join(dir, entry));
      await takeOwnership(dir);
      expect((await lstat(join(dir, entry))).isSymbolicLink()).toBe(true);
    } finally {
      if (saved === undefined) delete process.env.NODE_OPTIONS;
      else process.env.NODE_OPTIONS = saved;
    }
    for (const p of ['', 'private', 'private/f']) expect(await ownerOf(join(host, p))).toBe('0:0 755');
  });

  it('post records the manifest beside, not through, a symlink a build planted by its name', async () => {
    const outside = join(work, 'authorized_keys');
    await writeFile(outside, 'ssh-ed25519 AAAA runner\n');
    await symlink(outside, join(dir, OWNERS_FILE));
    await takeOwnership(dir);
    expect(await readFile(outside, 'utf8')).toBe('ssh-ed25519 AAAA runner\n');
    expect((await lstat(join(dir, OWNERS_FILE))).isFile()).toBe(true);
    expect((await readOwners(dir))!.get('u/private/f')).toEqual({ uid: 1000, gid: 1001, mode: 0o640 });
  });

  it('a planted manifest of more JSON than the tree accounts for is refused unread', async () => {
    // Parsed, a few hundred MB of `[0,0,...` end the process (heap exhausted), and compress to nothing in a cache
    // entry. Whitespace keeps this one cheap to parse, were it parsed.
    await writeFile(join(dir, OWNERS_FILE), `[${' '.repeat(2 * 1024 * 1024)}]`);
    // What the tree lists is counted without following its symlinks, out of it or round a loop.
    await symlink('/usr', join(dir, 'u/usr'));
    await symlink('..', join(dir, 'u/private/up'));
    await expect(readOwners(dir)).rejects.toThrow('larger than');
  });

  it('the text of a planted manifest that is no JSON stays out of the message', async () => {
    // JSON.parse quotes the text it stopped at, here escape sequences a terminal or the job log would act on.
    await writeFile(join(dir, OWNERS_FILE), '\u001b]8;;https://evil.example\u0007click\u001b]8;;\u0007');
    const refusal = await readOwners(dir).then(
      () => 'accepted',
      (error: Error) => error.message,
    );
    expect(refusal).toBe(`${OWNERS_FILE} holds no valid JSON`);
  });

  it('a manifest that is no regular file (a symlink out of the tree or to a good one inside, a dir) is refused unread', async () => {
    const manifest = join(dir, OWNERS_FILE);
    // A build with a cache mount of id=. reaches the top of the cache-mount dir: a rootful post reads what it
    // planted there, and JSON.parse would quote the start of the file it points at.
    const secret = join(work, 'shadow');
    await writeFile(secret, 'root:$y$j9T$secret:19000:0:99999:7:::\n');
    await symlink(secret, manifest);
    await expect(readOwners(dir)).rejects.toThrow('not a regular file');
    await rm(manifest);
    await writeFile(join(dir, 'u/good.json'), JSON.stringify([['u', 5, 5, 0o755]]));
    await symlink('u/good.json', manifest);
    await expect(readOwners(dir)).rejects.toThrow('not a regular file');
    await rm(manifest);
    await mkdir(manifest);
    await expect(readOwners(dir)).rejects.toThrow('EISDIR');
  });

  it('names from a planted entry reach the log with their escape sequences flattened (directory cache, in process)', async () => {
    const cacheDir = join(work, 'cache');
    const stage = join(work, 'stage');
    const live = join(work, 'scratch', 'buildah-cache');
    const planted = join(stage, basename(live));
    // OSC 52 has a terminal put text on the clipboard; ESC [2J clears the screen.
    await mkdir(planted, { recursive: true });
    await writeFile(join(planted, 'x\u001b]52;c;cHduZWQ=\u0007'), '');
    await chmod(join(planted, 'x\u001b]52;c;cHduZWQ=\u0007'), 0o4755);
    await symlink('/etc', join(planted, 'y\u001b[2J'));
    const { host, log } = cliHost();
    const key = `names-Linux-${process.arch === 'arm64' ? 'ARM64' : 'X64'}-planted`;
    expect((await saveToDirCache(host, cacheDir, [planted], key)).outcome).toBe('saved');
    await rm(stage, { recursive: true });
    await mkdir(dirname(live));
    process.env[CACHE_DIR_ENV] = cacheDir;
    try {
      expect((await restoreCacheMounts(host, { stage, live }, 'names', [])).matchedKey).toBe(key);
    } finally {
      delete process.env[CACHE_DIR_ENV];
    }
    expect(log.filter((line) => line.startsWith('warning: cache mounts from'))).toEqual([
      expect.stringContaining(
        'leading out of the cache-mount dir (buildah would follow them to mount what they point at into builds): y?[2J.',
      ),
      expect.stringContaining('cleared the setuid/setgid bits of 1 file(s): x?]52;c;cHduZWQ=?.'),
    ]);
    expect(log.join('\n')).not.toContain('\u001b');
  });
});
