/**
 * The pieces of the streaming restore that must agree with something outside: the cache version and service
 * version with @actions/cache's own functions (imported from the installed library, so an upgrade that changes
 * them fails here), and the tar watcher with archives written by real GNU tar.
 */
import { describe, expect, it } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../support/harness.js';
import {
  cacheReadable,
  cacheServiceVersion,
  cacheVersion,
  compressionMethod,
} from '../../src/core/cache-version.js';
import { confineMembers, EntryRefused } from '../../src/core/cache-confinement.js';
import { TarMemberWatcher, type TarMember } from '../../src/core/tar-members.js';
import { verifyStored } from '../../src/actions/preseed-podman-vm/image-store.js';

interface LibraryInternals {
  getCacheVersion(paths: string[], method?: string, crossOs?: boolean): string;
  getCompressionMethod(): Promise<string>;
}
interface LibraryConfig {
  getCacheServiceVersion(): string;
  isCacheReadable(mode: string): boolean;
  getCacheMode(): string;
}

// Not exported by the package: loaded by file path, which the exports map does not guard.
const internal = (file: string) =>
  import(join(REPO_ROOT, 'node_modules/@actions/cache/lib/internal', file)) as Promise<unknown>;

async function withEnv<T>(env: Record<string, string | undefined>, fn: () => T | Promise<T>): Promise<T> {
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

describe('cache version, as @actions/cache computes it', () => {
  it('matches the library for the same paths and compression method', async () => {
    const lib = (await internal('cacheUtils.js')) as LibraryInternals;
    const pathSets = [
      ['/tmp/runner/ici-pvm/machine-os-qemu-x86_64.qcow2.zst', '/tmp/runner/ici-pvm/machine-os.json'],
      ['/home/runner/work/_temp/ici-rbe/buildah-cache'],
      ['relative/dir', '~/.cache/x', 'with|pipe and spaces'],
    ];
    for (const paths of pathSets) {
      for (const method of ['zstd-without-long', 'gzip'] as const) {
        expect(cacheVersion(paths, method)).toBe(lib.getCacheVersion(paths, method));
      }
    }
  });

  it('detects the same compression method as the library on this machine', async () => {
    const lib = (await internal('cacheUtils.js')) as LibraryInternals;
    const { captureStdout } = await import('../support/cache-files.js');
    const { value: theirs } = await captureStdout(() => lib.getCompressionMethod());
    expect(await compressionMethod()).toBe(theirs);
  });

  it('marks Windows entries as the library does without enableCrossOsArchive', () => {
    const paths = ['C:\\a'];
    const expected = createHash('sha256').update(
      ['C:\\a', 'zstd-without-long', 'windows-only', '1.0'].join('|'),
    );
    expect(cacheVersion(paths, 'zstd-without-long', 'win32')).toBe(expected.digest('hex'));
  });

  it('picks the service version and read permission as the library does', async () => {
    const lib = (await internal('config.js')) as LibraryConfig;
    const cases: Array<Record<string, string | undefined>> = [
      { GITHUB_SERVER_URL: 'https://github.com', ACTIONS_CACHE_SERVICE_V2: 'true' },
      { GITHUB_SERVER_URL: undefined, ACTIONS_CACHE_SERVICE_V2: 'true' },
      { GITHUB_SERVER_URL: 'https://github.com', ACTIONS_CACHE_SERVICE_V2: undefined },
      { GITHUB_SERVER_URL: 'https://ghes.example.com', ACTIONS_CACHE_SERVICE_V2: 'true' },
      { GITHUB_SERVER_URL: 'https://octo.ghe.com', ACTIONS_CACHE_SERVICE_V2: 'true' },
      { GITHUB_SERVER_URL: 'http://api.localhost', ACTIONS_CACHE_SERVICE_V2: '1' },
    ];
    for (const env of cases) {
      await withEnv(env, () => expect(cacheServiceVersion()).toBe(lib.getCacheServiceVersion()));
    }
    for (const mode of [undefined, '', 'read', 'write', 'write-only', 'none', 'READ ', 'bogus']) {
      await withEnv({ ACTIONS_CACHE_MODE: mode }, () =>
        expect(cacheReadable()).toBe(lib.isCacheReadable(lib.getCacheMode())),
      );
    }
  });
});

describe('tar member watcher', () => {
  async function watch(format: string, hash: boolean) {
    const dir = mkdtempSync(join(tmpdir(), 'ici-unit-tar-'));
    try {
      const long = `${'deep-directory-name-'.repeat(4)}/${'a-file-with-a-long-name-'.repeat(5)}.bin`;
      mkdirSync(join(dir, 'src', long, '..'), { recursive: true });
      writeFileSync(join(dir, 'src', long), 'long named content');
      writeFileSync(join(dir, 'src', 'empty'), '');
      writeFileSync(join(dir, 'src', 'big.bin'), Buffer.alloc(70_000, 7));
      symlinkSync('big.bin', join(dir, 'src', 'link'));
      const archive = execFileSync('tar', [`--format=${format}`, '-cf', '-', '-C', dir, 'src']);
      const watcher = new TarMemberWatcher(hash);
      // Shown the way the relay shows it: in one buffer, overwritten as soon as the call returns.
      const reused = Buffer.alloc(1000);
      for (let at = 0; at < archive.length; at += reused.length) {
        const length = archive.copy(reused, 0, at, at + reused.length);
        watcher.inspect(reused.subarray(0, length));
        reused.fill(0xaa);
      }
      return { members: watcher.members, ended: watcher.ended, long };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  const sha = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

  it.each(['posix', 'gnu'])(
    'lists names, types and sha256 of a %s archive shown in a reused buffer',
    async (format) => {
      const { members, ended, long } = await watch(format, true);
      expect(ended).toBe(true);
      const byName = new Map(members.map((m) => [m.name.replace(/\/$/, ''), m]));
      expect(byName.get('src')?.type).toBe('dir');
      expect(byName.get(`src/${long}`)).toMatchObject({ type: 'file', sha256: sha('long named content') });
      expect(byName.get('src/empty')).toMatchObject({ type: 'file', size: 0, sha256: sha('') });
      expect(byName.get('src/big.bin')).toMatchObject({ type: 'file', sha256: sha(Buffer.alloc(70_000, 7)) });
      expect(byName.get('src/link')).toMatchObject({ type: 'symlink', link: 'big.bin' });
    },
  );

  it('hashes nothing unless asked', async () => {
    const { members } = await watch('posix', false);
    expect(members.every((m) => m.sha256 === undefined)).toBe(true);
  });

  it('refuses bytes that are not tar', async () => {
    const watcher = new TarMemberWatcher(false);
    expect(() => watcher.inspect(Buffer.alloc(1024, 1))).toThrow(/not a tar stream/);
    expect(watcher.failure).toBeDefined();
  });
});

/** One ustar header block (name, type, size, link, magic as given), with its checksum. */
function header(fields: {
  name: string | Buffer;
  type?: string;
  size?: string;
  link?: string | Buffer;
  magic?: string;
  prefix?: string;
}): Buffer {
  const block = Buffer.alloc(512);
  Buffer.from(fields.name).copy(block, 0, 0, 100);
  block.write('0000644\0', 100, 'latin1');
  block.write('0000000\0', 108, 'latin1');
  block.write('0000000\0', 116, 'latin1');
  block.write(fields.size ?? '00000000000\0', 124, 12, 'latin1');
  block.write('00000000000\0', 136, 'latin1');
  block.write(fields.type ?? '0', 156, 'latin1');
  Buffer.from(fields.link ?? '').copy(block, 157, 0, 100);
  block.write(fields.magic ?? 'ustar\x0000', 257, 8, 'latin1');
  block.write(fields.prefix ?? '', 345, 155, 'utf8');
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return block;
}

const octal = (n: number) => `${n.toString(8).padStart(11, '0')}\0`;
const pad = (data: Buffer) => Buffer.concat([data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
const paxRecord = (key: string, value: string | Buffer) => {
  const body = Buffer.concat([Buffer.from(` ${key}=`), Buffer.from(value), Buffer.from('\n')]);
  let length = body.length + 1;
  while (`${length}`.length + body.length !== length) length++;
  return Buffer.concat([Buffer.from(`${length}`), body]);
};
const meta = (type: string, data: string | Buffer) =>
  Buffer.concat([
    header({ name: 'meta', type, size: octal(Buffer.byteLength(data)) }),
    pad(Buffer.from(data)),
  ]);
const end = Buffer.alloc(1024);

async function membersOf(...blocks: Buffer[]): Promise<TarMember[]> {
  const watcher = new TarMemberWatcher(false);
  watcher.inspect(Buffer.concat(blocks));
  return watcher.members;
}

describe('tar member watcher: reads names as GNU tar does, or refuses', () => {
  it('joins the ustar prefix only in POSIX (`ustar\\0`) headers, as GNU tar does', async () => {
    expect(await membersOf(header({ name: 'f', prefix: 'dir' }), end)).toMatchObject([{ name: 'dir/f' }]);
    // GNU's old header keeps other fields where the prefix would be.
    expect(await membersOf(header({ name: 'f', prefix: 'dir', magic: 'ustar  \0' }), end)).toMatchObject([
      { name: 'f' },
    ]);
  });

  it('gives a pax path precedence over a GNU long name in either order, and reads link targets', async () => {
    const pax = meta('x', paxRecord('path', 'from-pax'));
    const long = meta('L', 'from-long-name\0');
    for (const order of [
      [pax, long],
      [long, pax],
    ]) {
      expect(await membersOf(...order, header({ name: 'short' }), end)).toMatchObject([{ name: 'from-pax' }]);
    }
    expect(
      await membersOf(meta('K', 'long-target\0'), header({ name: 'l', type: '2', link: 'short' }), end),
    ).toEqual([{ name: 'l', type: 'symlink', size: 0, link: 'long-target' }]);
  });

  // \xff and \xfe are distinct names to tar; a lenient decoder makes both U+FFFD, and the checks keyed by name
  // (symlinks made, digests) would take one for the other.
  const notUtf8 = (text: string, byte: number) => Buffer.concat([Buffer.from(text), Buffer.from([byte])]);

  it('keeps names byte-exact: valid UTF-8 as is, and raw bytes in pax values that are not names', async () => {
    expect(
      await membersOf(
        meta(
          'x',
          Buffer.concat([
            paxRecord('path', 'caf\u00e9/\u{1f600}'),
            paxRecord('SCHILY.xattr.user.x', notUtf8('', 0xff)),
          ]),
        ),
        header({ name: 'short' }),
        header({ name: 'na\u00efve', type: '2', link: '\u00e9t\u00e9' }),
        // A leading byte-order mark is part of the name (a decoder that drops it makes it another name's).
        header({ name: '\ufeffshort' }),
        end,
      ),
    ).toEqual([
      { name: 'caf\u00e9/\u{1f600}', type: 'file', size: 0 },
      { name: 'na\u00efve', type: 'symlink', size: 0, link: '\u00e9t\u00e9' },
      { name: '\ufeffshort', type: 'file', size: 0 },
    ]);
  });

  it.each([
    ['a header name', [header({ name: notUtf8('d/', 0xff) }), end]],
    ['a header link target', [header({ name: 'l', type: '2', link: notUtf8('t', 0xfe) }), end]],
    ['a pax path', [meta('x', paxRecord('path', notUtf8('d/', 0xfd))), header({ name: 'f' }), end]],
    [
      'a pax linkpath',
      [meta('x', paxRecord('linkpath', notUtf8('', 0xc3))), header({ name: 'l', type: '1' }), end],
    ],
    [
      'a GNU long name',
      [meta('L', Buffer.concat([notUtf8('d/', 0xfc), Buffer.alloc(1)])), header({ name: 'f' }), end],
    ],
  ])('refuses a member whose name is not valid UTF-8: %s', async (_what, blocks) => {
    await expect(membersOf(...blocks)).rejects.toThrow(/not valid UTF-8/);
  });

  const refused: Array<[string, Buffer[]]> = [
    // GNU tar skips one leading NUL and would read 0o777 bytes of data here, this watcher none.
    [
      'a size with a leading NUL',
      [header({ name: 'f', size: '\x000000000777 ' }), pad(Buffer.alloc(511)), end],
    ],
    ['a size that is not octal', [header({ name: 'f', size: '0000000001x\0' }), end]],
    [
      'two pax headers for one member',
      [meta('x', paxRecord('path', 'a')), meta('x', paxRecord('mtime', '1')), header({ name: 'f' }), end],
    ],
    ['a sparse file', [header({ name: 'f', type: 'S' }), end]],
    ['a pax sparse name', [meta('x', paxRecord('GNU.sparse.name', '/etc/x')), header({ name: 'f' }), end]],
    [
      'a global header that sets a path',
      [meta('g', paxRecord('path', '/etc/x')), header({ name: 'f' }), end],
    ],
    [
      'a directory with data',
      [header({ name: 'd/', type: '5', size: octal(512) }), pad(Buffer.alloc(1)), end],
    ],
    ['a file named like a directory', [header({ name: 'd/', type: '0' }), end]],
    [
      'a NUL in a pax path',
      [meta('x', paxRecord('path', '/etc/passwd\0/../ok')), header({ name: 'f' }), end],
    ],
  ];

  it.each(refused)('refuses %s', async (_what, blocks) => {
    await expect(membersOf(...blocks)).rejects.toThrow();
  });
});

describe('confineMembers: where an archive may write', () => {
  const ws = '/w/ws';
  const member = (name: string, type: TarMember['type'] = 'file', link?: string): TarMember =>
    link === undefined ? { name, type, size: 0 } : { name, type, size: 0, link };

  function run(paths: string[], members: TarMember[]): string | undefined {
    const check = confineMembers(ws, paths);
    try {
      members.forEach(check);
      return undefined;
    } catch (error) {
      expect(error).toBeInstanceOf(EntryRefused);
      return (error as Error).message;
    }
  }

  it('takes what @actions/cache writes: names relative to the workspace, links inside', () => {
    expect(
      run(
        ['/w/temp/ici-x'],
        [
          member('../temp/ici-x/', 'dir'),
          member('../temp/ici-x/a'),
          member('../temp/ici-x/b', 'hardlink', '../temp/ici-x/a'),
          member('../temp/ici-x/bin/tool', 'symlink', '../lib/tool'),
          member('../temp/ici-x/abs', 'symlink', '/w/temp/ici-x/a'),
        ],
      ),
    ).toBeUndefined();
  });

  it.each([
    ['a sibling with the same prefix', [member('/w/temp/ici-x2/f')], /outside the cache paths/],
    ['.. after a directory name', [member('/w/temp/ici-x/../ici-y/f')], /climbs/],
    [
      'a file under a symlink of the archive',
      [member('/w/temp/ici-x/s', 'symlink', 'sub'), member('/w/temp/ici-x/s/f')],
      /reached through the archive's symlink/,
    ],
    [
      // ici-x/up is ici-x itself, so ici-x/a is /w/temp: the file is written outside.
      'a file under a symlink whose target goes through another symlink',
      [
        member('/w/temp/ici-x/up', 'symlink', '.'),
        member('/w/temp/ici-x/a', 'symlink', 'up/..'),
        member('/w/temp/ici-x/a/f'),
      ],
      /reached through the archive's symlink '\/w\/temp\/ici-x\/a'/,
    ],
    [
      'a hard link to a file reached through a symlink of the archive',
      [
        member('/w/temp/ici-x/s', 'symlink', '/etc'),
        member('/w/temp/ici-x/h', 'hardlink', '/w/temp/ici-x/s/passwd'),
      ],
      /hard link to '.*', reached through the archive's symlink/,
    ],
    [
      'a hard link to a symlink (its relative target moves)',
      [
        member('/w/temp/ici-x/d/s', 'symlink', '../f'),
        member('/w/temp/ici-x/h', 'hardlink', '/w/temp/ici-x/d/s'),
      ],
      /hard link to the archive's symlink/,
    ],
    ['a device node', [member('/w/temp/ici-x/sda', 'device')], /device node/],
    // Whoever reads it (preseed hashing a disk image) would block forever.
    ['a FIFO', [member('/w/temp/ici-x/disk.raw', 'fifo')], /is a FIFO/],
  ])('refuses %s', (_what, members, reason) => {
    expect(run(['/w/temp/ici-x'], members)).toMatch(reason);
  });

  // tar never follows a symlink it made, and what is written through one is refused by name: the target is free.
  it.each([
    [
      "a venv's interpreter links (absolute, to the system)",
      [
        member('/w/temp/ici-x/bin/', 'dir'),
        member('/w/temp/ici-x/bin/python', 'symlink', '/usr/bin/python3'),
        member('/w/temp/ici-x/bin/python3', 'symlink', 'python'),
      ],
    ],
    [
      'lib64 -> lib and a link that goes through it',
      [
        member('/w/temp/ici-x/lib/', 'dir'),
        member('/w/temp/ici-x/lib/libz.so.1'),
        member('/w/temp/ici-x/lib64', 'symlink', 'lib'),
        member('/w/temp/ici-x/libz.so', 'symlink', 'lib64/libz.so.1'),
      ],
    ],
    [
      "links to the paths' parent, dangling, and one made where a later one's target goes",
      [
        member('/w/temp/ici-x/s', 'symlink', '..'),
        member('/w/temp/ici-x/dangling', 'symlink', 'none/here'),
        member('/w/temp/ici-x/a', 'symlink', 'up/../f'),
        member('/w/temp/ici-x/up', 'symlink', '.'),
      ],
    ],
  ])('takes symlinks wherever they point: %s', (_what, members) => {
    expect(run(['/w/temp/ici-x'], members)).toBeUndefined();
  });
});

describe("preseed's check of a restored image", () => {
  it('trusts no digest for a symlink or FIFO at the image path: not a regular file, deleted with its record', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ici-unit-image-'));
    try {
      writeFileSync(join(dir, 'real'), 'the real disk');
      const fileDigest = `sha256:${createHash('sha256').update('the real disk').digest('hex')}`;
      const record = { source: 'x', digest: fileDigest, fileDigest, title: 'disk.raw', size: 13 };
      for (const make of [
        (image: string) => symlinkSync(join(dir, 'real'), image),
        (image: string) => execFileSync('mkfifo', [image]),
      ]) {
        const paths = { image: join(dir, 'disk.raw'), record: join(dir, 'disk.json') };
        make(paths.image);
        writeFileSync(paths.record, '{}');
        // The digest a restore could report for the path; the symlink even leads to the very bytes.
        expect(await verifyStored(paths, record, fileDigest)).toEqual({
          ok: false,
          reason: expect.stringMatching(/not a regular file/),
        });
        expect(readdirSync(dir)).toEqual(['real']);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
