/**
 * The pieces of the streaming restore that must agree with something outside: the cache version and service
 * version with @actions/cache's own functions (imported from the installed library, so an upgrade that changes
 * them fails here), and the tar watcher with archives written by real GNU tar.
 */
import { describe, expect, it } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { REPO_ROOT } from '../support/harness.js';
import {
  cacheReadable,
  cacheServiceVersion,
  cacheVersion,
  compressionMethod,
} from '../../src/core/cache-version.js';
import { TarMemberWatcher } from '../../src/core/tar-members.js';

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
      const out: Buffer[] = [];
      await pipeline(
        Readable.from([archive.subarray(0, 1000), archive.subarray(1000)]),
        watcher,
        async (src) => {
          for await (const chunk of src) out.push(chunk as Buffer);
        },
      );
      expect(Buffer.concat(out).equals(archive)).toBe(true);
      return { members: watcher.members, ended: watcher.ended, long };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  const sha = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

  it.each(['posix', 'gnu'])(
    'lists names, types and sha256 of a %s archive, passing the bytes unchanged',
    async (format) => {
      const { members, ended, long } = await watch(format, true);
      expect(ended).toBe(true);
      const byName = new Map(members.map((m) => [m.name.replace(/\/$/, ''), m]));
      expect(byName.get('src')?.type).toBe('dir');
      expect(byName.get(`src/${long}`)).toMatchObject({ type: 'file', sha256: sha('long named content') });
      expect(byName.get('src/empty')).toMatchObject({ type: 'file', size: 0, sha256: sha('') });
      expect(byName.get('src/big.bin')).toMatchObject({ type: 'file', sha256: sha(Buffer.alloc(70_000, 7)) });
      expect(byName.get('src/link')?.type).toBe('other');
    },
  );

  it('hashes nothing unless asked', async () => {
    const { members } = await watch('posix', false);
    expect(members.every((m) => m.sha256 === undefined)).toBe(true);
  });

  it('refuses bytes that are not tar', async () => {
    const watcher = new TarMemberWatcher(false);
    await expect(
      pipeline(Readable.from([Buffer.alloc(1024, 1)]), watcher, async (src) => {
        for await (const _ of src) void _;
      }),
    ).rejects.toThrow(/not a tar stream/);
    expect(watcher.failure).toBeDefined();
  });
});
