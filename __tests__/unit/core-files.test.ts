import { describe, expect, it } from '@jest/globals';
import { execFileSync, spawn } from 'node:child_process';
import {
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { acquireLock, LockTimeoutError, writeFileAtomic } from '../../src/core/atomic.js';
import { FILE_TOO_LARGE, fileChunks, NOT_A_REGULAR_FILE, readRegularFile } from '../../src/core/files.js';
import {
  createIsolatedAuth,
  findCredential,
  normaliseAuthKey,
  parseAuthConfig,
  removeIsolatedAuth,
} from '../../src/actions/push-multi-tag/auth-files.js';
import { CliHost } from '../../src/core/host.js';
import { MapInputSource } from '../../src/core/inputs.js';
import { formatBytes, formatDuration, heading, markdownTable } from '../../src/core/summary.js';
import { removeScratchDirs, scratchDir, stableDir } from '../../src/core/workspace.js';
import { removeAfterFile } from '../support/run-dir.js';

const tempDir = () => {
  const dir = mkdtempSync(join(tmpdir(), 'ici-unit-'));
  removeAfterFile(dir);
  return dir;
};
const quietHost = () =>
  new CliHost({ inputs: new MapInputSource({}), log: () => undefined, out: () => undefined });

describe('writeFileAtomic', () => {
  it('replaces the file whole and leaves no temp file behind', async () => {
    const dir = tempDir();
    const file = join(dir, 'images.json');
    writeFileSync(file, 'old');
    await writeFileAtomic(file, 'new content', 0o640);
    expect(readFileSync(file, 'utf8')).toBe('new content');
    expect(statSync(file).mode & 0o777).toBe(0o640);
    expect(readdirSync(dir)).toEqual(['images.json']);
  });

  it('fails without touching the target when the directory is missing', async () => {
    await expect(writeFileAtomic(join(tempDir(), 'no', 'such'), 'x')).rejects.toThrow(/ENOENT/);
  });

  it('removes its temp file when the write fails: a full file system keeps no partial copy [tmpfs, needs root]', async () => {
    const dir = tempDir();
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', dir]);
    try {
      writeFileSync(join(dir, 'images.json'), 'old');
      await expect(writeFileAtomic(join(dir, 'images.json'), Buffer.alloc(1 << 20))).rejects.toThrow(
        /ENOSPC/,
      );
      expect(readdirSync(dir)).toEqual(['images.json']);
      expect(readFileSync(join(dir, 'images.json'), 'utf8')).toBe('old');
    } finally {
      execFileSync('umount', [dir]);
    }
  });
});

describe('locks', () => {
  it('is exclusive, names its owner, and times out clearly', async () => {
    const path = join(tempDir(), 'repo.lock');
    const lock = await acquireLock(path, { timeoutMs: 1000, purpose: 'prune' });
    const owner = JSON.parse(readFileSync(path, 'utf8'));
    expect(owner).toMatchObject({ pid: process.pid, host: hostname(), purpose: 'prune' });
    const error = await acquireLock(path, { timeoutMs: 300, pollMs: 50 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LockTimeoutError);
    expect((error as Error).message).toContain(`held by pid ${process.pid} on ${hostname()}`);
    await lock.release();
    await lock.release();
    expect(existsSync(path)).toBe(false);
  });

  it('waits for a holder that releases', async () => {
    const path = join(tempDir(), 'repo.lock');
    const first = await acquireLock(path, { timeoutMs: 1000 });
    const order: string[] = [];
    const second = acquireLock(path, { timeoutMs: 5000, pollMs: 20 }).then(async (lock) => {
      order.push('second');
      await lock.release();
    });
    await new Promise((r) => setTimeout(r, 100));
    order.push('first releases');
    await first.release();
    await second;
    expect(order).toEqual(['first releases', 'second']);
  });

  it('breaks a lock whose owner process is dead on this host', async () => {
    const path = join(tempDir(), 'repo.lock');
    const child = spawn('true');
    await new Promise((r) => child.on('close', r));
    writeFileSync(path, JSON.stringify({ pid: child.pid, host: hostname(), time: new Date().toISOString() }));
    const lock = await acquireLock(path, { timeoutMs: 1000 });
    expect(JSON.parse(readFileSync(path, 'utf8')).pid).toBe(process.pid);
    await lock.release();
  });

  it('breaks a lock older than staleMs even from another host', async () => {
    const path = join(tempDir(), 'repo.lock');
    writeFileSync(path, JSON.stringify({ pid: 1, host: 'elsewhere', time: '2020-01-01T00:00:00Z' }));
    const old = new Date(Date.now() - 3_600_000);
    utimesSync(path, old, old);
    await expect(acquireLock(path, { timeoutMs: 200, pollMs: 20, staleMs: 60_000 })).resolves.toBeDefined();
  });

  it('keeps a fresh lock from another host', async () => {
    const path = join(tempDir(), 'repo.lock');
    writeFileSync(path, JSON.stringify({ pid: 1, host: 'elsewhere', time: new Date().toISOString() }));
    await expect(acquireLock(path, { timeoutMs: 200, pollMs: 20 })).rejects.toThrow(
      /held by pid 1 on elsewhere/,
    );
  });
});

describe('auth', () => {
  const b64 = (s: string) => Buffer.from(s).toString('base64');

  it('parses containers and docker auth files, normalising keys', () => {
    const { auths } = parseAuthConfig(
      JSON.stringify({
        auths: {
          'https://index.docker.io/v1/': { auth: b64('hub:pw:with:colons') },
          'reg.example:5000/team': { username: 'u', password: 'p' },
          'broken.example': { auth: b64('nocolon') },
        },
      }),
    );
    expect(auths.get('docker.io')).toEqual({ username: 'hub', password: 'pw:with:colons' });
    expect(auths.get('reg.example:5000/team')).toEqual({ username: 'u', password: 'p' });
    expect(auths.has('broken.example')).toBe(false);
    expect(normaliseAuthKey('http://r.example/')).toBe('r.example');
  });

  it('finds the most specific credential first', () => {
    const auths = new Map([
      ['r.example', { username: 'host', password: '1' }],
      ['r.example/team', { username: 'team', password: '2' }],
    ]);
    expect(findCredential(auths, 'r.example', 'team/app')).toEqual({
      key: 'r.example/team',
      credential: { username: 'team', password: '2' },
    });
    expect(findCredential(auths, 'r.example', 'other/app')?.credential.username).toBe('host');
    expect(findCredential(auths, 'q.example', 'team/app')).toBeUndefined();
  });

  it('writes a private 0600 auth file, masks secrets, and is removed by post even twice', async () => {
    process.env.RUNNER_TEMP = tempDir();
    try {
      const secrets: string[] = [];
      const host = quietHost();
      const setSecret = host.setSecret.bind(host);
      host.setSecret = (s) => {
        secrets.push(s);
        setSecret(s);
      };
      const auth = await createIsolatedAuth(host, [
        { registry: 'r.example:5000', username: 'bob', password: 'pw' },
      ]);
      expect(secrets).toEqual(['pw', b64('bob:pw')]);
      expect(statSync(auth.dir).mode & 0o777).toBe(0o700);
      expect(statSync(auth.authFile).mode & 0o777).toBe(0o600);
      expect(parseAuthConfig(readFileSync(auth.authFile, 'utf8')).auths.get('r.example:5000')).toEqual({
        username: 'bob',
        password: 'pw',
      });
      expect(readFileSync(join(auth.dockerConfigDir, 'config.json'), 'utf8')).toBe(
        readFileSync(auth.authFile, 'utf8'),
      );
      expect(auth.env).toEqual({ REGISTRY_AUTH_FILE: auth.authFile, DOCKER_CONFIG: auth.dockerConfigDir });
      expect(await removeIsolatedAuth(host)).toBe(auth.dir);
      expect(existsSync(auth.dir)).toBe(false);
      await removeIsolatedAuth(host);
    } finally {
      delete process.env.RUNNER_TEMP;
    }
  });
});

describe('workspace', () => {
  it('stable dirs have the same short path every time; scratch dirs are new and removed by post', async () => {
    const env = { RUNNER_TEMP: tempDir() };
    process.env.RUNNER_TEMP = env.RUNNER_TEMP;
    try {
      expect(await stableDir('vm', env)).toBe(join(env.RUNNER_TEMP, 'ici-vm'));
      expect(await stableDir('vm', env)).toBe(join(env.RUNNER_TEMP, 'ici-vm'));
      const host = quietHost();
      const a = await scratchDir(host, env);
      const b = await scratchDir(host, env);
      expect(a).not.toBe(b);
      expect(a).toMatch(/\/ici-[0-9a-f]{6}$/);
      expect(await removeScratchDirs(host)).toEqual([a, b]);
      expect(existsSync(a) || existsSync(b)).toBe(false);
      expect(await removeScratchDirs(host)).toEqual([]);
    } finally {
      delete process.env.RUNNER_TEMP;
    }
  });
});

describe('summary', () => {
  it('builds escaped markdown tables', () => {
    expect(markdownTable(['ref', 'note'], [['a|b', 'x\ny']])).toBe(
      '| ref | note |\n| --- | --- |\n| a\\|b | x<br>y |\n',
    );
    expect(heading('Pushed', 2)).toBe('## Pushed\n\n');
  });

  it('formats bytes and durations', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(5 * 1024 * 1024)).toBe('5.0 MiB');
    expect(formatDuration(250)).toBe('250 ms');
    expect(formatDuration(12_345)).toBe('12.3 s');
    expect(formatDuration(125_000)).toBe('2m5s');
    // Rounding carries into the next unit instead of showing 1000 ms, 60.0 s or 1m60s.
    expect(formatDuration(999.7)).toBe('1.0 s');
    expect(formatDuration(59_970)).toBe('1m0s');
    expect(formatDuration(119_600)).toBe('2m0s');
  });

  it('shows a size that rounds up to 1024 of a unit in the next unit', () => {
    expect(formatBytes(1023.99 * 1024)).toBe('1.0 MiB');
    expect(formatBytes(1024 * 1024 * 1024 - 1)).toBe('1.0 GiB');
    expect(formatBytes(1023.9 * 1024)).toBe('1023.9 KiB');
    expect(formatBytes(1023.6)).toBe('1.0 KiB');
    expect(formatBytes(1023)).toBe('1023 B');
  });
});

/**
 * Names opened in `dir`, as inotify reports them (IN_OPEN; a stat() is none), in a python3 watcher: node's
 * fs.watch does not report opens. `inodes` are watched themselves, whatever name they are opened by, and reported
 * by the path given. `openedUntil(marker)` creates the marker (in `dir`) and returns what was opened before.
 */
async function watchOpens(
  dir: string,
  inodes: string[] = [],
): Promise<{ openedUntil(marker: string): Promise<string[]> }> {
  const script = `
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
if fd < 0 or libc.inotify_add_watch(fd, sys.argv[1].encode(), 0x20 | 0x100) < 0: sys.exit(3)
inodes = {libc.inotify_add_watch(fd, p.encode(), 0x20): p for p in sys.argv[2:]}
if -1 in inodes: sys.exit(3)
print("ready", flush=True)
while True:
    buf = os.read(fd, 65536)
    i = 0
    while i < len(buf):
        wd, mask, _, size = struct.unpack_from("iIII", buf, i)
        name = inodes.get(wd) or buf[i + 16:i + 16 + size].rstrip(b"\\0").decode()
        i += 16 + size
        if mask & 0x100 and name == "done": sys.exit(0)
        if mask & 0x20: print("open " + name, flush=True)
`;
  const child = spawn('python3', ['-c', script, dir, ...inodes], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', () => out.startsWith('ready\n') && resolve());
    child.on('exit', (code) => reject(new Error(`inotify watcher exited ${code}`)));
  });
  return {
    async openedUntil(marker) {
      const exited = new Promise((resolve) => child.on('exit', resolve));
      writeFileSync(marker, '');
      await exited;
      return out
        .split('\n')
        .filter((line) => line.startsWith('open '))
        .map((line) => line.slice(5));
    },
  };
}

describe('fileChunks', () => {
  const file = (size: number) => {
    const path = join(tempDir(), 'f');
    const bytes = Buffer.from(Array.from({ length: size }, (_, i) => (i * 7) % 251));
    writeFileSync(path, bytes);
    return { path, bytes };
  };
  /** Copies of what was yielded (the chunks themselves are one reused buffer), and the buffers seen. */
  const read = async (...args: Parameters<typeof fileChunks>) => {
    const chunks: Buffer[] = [];
    const buffers = new Set<ArrayBufferLike>();
    for await (const chunk of fileChunks(...args)) {
      chunks.push(Buffer.from(chunk));
      buffers.add(chunk.buffer);
    }
    return { chunks, buffers };
  };

  it('reads [start, end) in full chunks but the last, all through one buffer', async () => {
    const { path, bytes } = file(10_000);
    const { chunks, buffers } = await read(path, 1_000, 9_500, 4_096);
    expect(chunks.map((c) => c.length)).toEqual([4_096, 4_096, 308]);
    expect(Buffer.concat(chunks)).toEqual(bytes.subarray(1_000, 9_500));
    expect(buffers.size).toBe(1);
  });

  it('reads to the end of the file without an end, and nothing for an empty range', async () => {
    const { path, bytes } = file(9_000);
    expect(Buffer.concat((await read(path, 0, Infinity, 4_096)).chunks)).toEqual(bytes);
    expect((await read(path, 9_000, Infinity, 4_096)).chunks).toEqual([]);
    expect((await read(path, 5, 5)).chunks).toEqual([]);
  });

  it('fails, naming the file, when it ends before `end` (it changed) or cannot be read', async () => {
    const { path } = file(5_000);
    await expect(read(path, 0, 6_000, 4_096)).rejects.toThrow(
      `${path} ended at byte 5000, before byte 6000: it changed while being read.`,
    );
    const dir = tempDir();
    await expect(read(dir)).rejects.toMatchObject({
      code: 'EISDIR',
      message: expect.stringContaining(`cannot read ${dir}: EISDIR`),
    });
    await expect(read(join(dir, 'none'))).rejects.toMatchObject({
      code: 'ENOENT',
      message: expect.stringContaining(`cannot read ${join(dir, 'none')}: ENOENT`),
    });
  });

  it('refuses at once what is no regular file: a FIFO nobody writes (open would block), an endless device', async () => {
    const fifo = join(tempDir(), 'fifo');
    execFileSync('mkfifo', [fifo]);
    await expect(read(fifo)).rejects.toThrow(`cannot read ${fifo}: not a regular file.`);
    await expect(read('/dev/zero')).rejects.toThrow('cannot read /dev/zero: not a regular file.');
  }, 10_000);

  it('never opens what it refuses (opening a FIFO lets a waiting writer through, opening a device can act)', async () => {
    const dir = tempDir();
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const watcher = await watchOpens(dir);
    await expect(read(fifo)).rejects.toThrow(`cannot read ${fifo}: not a regular file.`);
    // The watcher reports in order: anything opened in the directory before the marker file appears.
    expect(await watcher.openedUntil(join(dir, 'done'))).toEqual([]);
  }, 10_000);

  const refused = 'ERR_NOT_A_REGULAR_FILE: cannot read P: not a regular file.';
  it.each([
    ['a FIFO', 'mkfifo "$d/x"', [refused]],
    ['a link to /dev/zero', 'ln -s /dev/zero "$d/x"', [refused]],
    [
      'a symlink loop',
      // Through a loop of two more links: a link to itself would be "the same file" as the one it replaces to mv.
      '[ -L "$d/a" ] || { ln -s b "$d/a"; ln -s a "$d/b"; }; ln -s a "$d/x"',
      ['stat', 'open'].map(
        (call) => `ELOOP: cannot read P: ELOOP: too many symbolic links encountered, ${call} 'P'`,
      ),
    ],
    [
      'nothing',
      ':',
      ['stat', 'open'].map((call) => `ENOENT: cannot read P: ENOENT: no such file or directory, ${call} 'P'`),
    ],
  ])(
    'a path swapped between a regular file and %s while it is read: its bytes, or the error that names it',
    async (_name, make, errors) => {
      const { path, bytes } = file(10_000);
      const dir = join(path, '..');
      writeFileSync(join(dir, 'keep'), bytes);
      // rename(2) swaps either in atomically, as fast as the shell can: every read meets one or the other.
      const swapper = spawn(
        'sh',
        [
          '-c',
          `d=${dir}; while :; do rm -f "$d/x"; ${make}; mv -f "$d/x" "$d/f" 2>/dev/null || rm -f "$d/f"; cp "$d/keep" "$d/y"; mv -f "$d/y" "$d/f"; done`,
        ],
        { stdio: 'ignore' },
      );
      const seen = new Set<string>();
      try {
        for (let i = 0; i < 400; i++) {
          const outcome = await read(path, 0, Infinity, 4_096).then(
            ({ chunks }) =>
              Buffer.concat(chunks).equals(bytes) ? 'read' : `bytes ${Buffer.concat(chunks).length}`,
            (error: NodeJS.ErrnoException) =>
              `${error.code}: ${error.message.replace(path, 'P').replace(path, 'P')}`,
          );
          seen.add(outcome);
        }
      } finally {
        swapper.kill();
      }
      // Never a hang on a FIFO, never /dev/zero's endless bytes, never another error: the check on what was
      // opened (fstat) covers the window between stat and open.
      expect(seen).toContain('read');
      expect([...seen].filter((s) => s !== 'read' && !errors.includes(s))).toEqual([]);
    },
    60_000,
  );

  it('never opens a FIFO renamed into place between the check and the open: the inode checked is the one opened', async () => {
    const { path, bytes } = file(10_000);
    const dir = join(path, '..');
    writeFileSync(join(dir, 'keep'), bytes);
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    const watcher = await watchOpens(dir, [fifo]);
    // The same FIFO (a hard link) and a regular file take turns at the path, swapped in by rename(2).
    const swapper = spawn(
      'sh',
      [
        '-c',
        `d=${dir}; while :; do ln "$d/fifo" "$d/x"; mv -f "$d/x" "$d/f"; cp "$d/keep" "$d/y"; mv -f "$d/y" "$d/f"; done`,
      ],
      { stdio: 'ignore' },
    );
    const seen = new Set<string>();
    try {
      for (let i = 0; i < 1_000; i++) {
        seen.add(
          await read(path, 0, Infinity, 4_096).then(
            ({ chunks }) => (Buffer.concat(chunks).equals(bytes) ? 'read' : 'other bytes'),
            (error: NodeJS.ErrnoException) => error.code ?? 'no code',
          ),
        );
      }
    } finally {
      swapper.kill();
    }
    expect([...seen].sort()).toEqual([NOT_A_REGULAR_FILE, 'read']);
    // Checked by path, then opened by path, the FIFO was opened whenever it came in between (the old code).
    expect(await watcher.openedUntil(join(dir, 'done'))).not.toContain(fifo);
  }, 60_000);

  it('reads a /proc file (size 0 by stat, content when read) to its end; a path past PATH_MAX fails naming it', async () => {
    expect(statSync('/proc/self/mounts').size).toBe(0);
    const { chunks } = await read('/proc/self/mounts', 0, Infinity, 4_096);
    expect(Buffer.concat(chunks).toString('utf8')).toContain(' / ');
    const long = join(tempDir(), 'd'.repeat(200), ...Array.from({ length: 25 }, () => 'x'.repeat(200)));
    await expect(read(long)).rejects.toMatchObject({
      code: 'ENAMETOOLONG',
      message: expect.stringMatching(/^cannot read \/.* ENAMETOOLONG: /),
    });
  });

  it('refuses a socket (open fails with ENXIO) and a block device as no regular file too, with its code', async () => {
    const socket = join(tempDir(), 'sock');
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    try {
      await expect(read(socket)).rejects.toMatchObject({
        code: NOT_A_REGULAR_FILE,
        message: `cannot read ${socket}: not a regular file.`,
      });
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
    // A loop device reads as whatever it is backed by (nothing, when unused): a whole disk is no blob either.
    const block = readdirSync('/dev')
      .map((name) => join('/dev', name))
      .find((path) => statSync(path, { throwIfNoEntry: false })?.isBlockDevice());
    if (block) {
      await expect(read(block)).rejects.toMatchObject({
        code: NOT_A_REGULAR_FILE,
        message: `cannot read ${block}: not a regular file.`,
      });
    }
  });
});

describe('readRegularFile', () => {
  it('reads a file of exactly `limit` bytes and refuses one byte more, naming it', async () => {
    const dir = tempDir();
    for (const limit of [1, 65_536, 1024 * 1024, 4 * 1024 * 1024]) {
      const path = join(dir, `f${limit}`);
      const bytes = Buffer.alloc(limit + 1, 'manifest');
      writeFileSync(path, bytes.subarray(0, limit));
      expect((await readRegularFile(path, limit)).equals(bytes.subarray(0, limit))).toBe(true);
      writeFileSync(path, bytes);
      await expect(readRegularFile(path, limit)).rejects.toMatchObject({
        code: FILE_TOO_LARGE,
        message: `cannot read ${path}: it is larger than ${limit} bytes.`,
      });
    }
  });

  it('leaves no descriptor open after any refusal or failure', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'big'), Buffer.alloc(100));
    symlinkSync('loop', join(dir, 'loop'));
    execFileSync('mkfifo', [join(dir, 'fifo')]);
    const socket = join(dir, 'sock');
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    const failing = ['none', 'loop', 'fifo', 'sock', 'big', 'big/x', '.'].map((name) => join(dir, name));
    const open = () => readdirSync('/proc/self/fd').length;
    try {
      const before = open();
      const codes = new Set<string>();
      for (let round = 0; round < 200; round++) {
        for (const path of [...failing, '/dev/zero']) {
          await readRegularFile(path, 50).catch((error: NodeJS.ErrnoException) => codes.add(error.code!));
        }
      }
      expect([...codes].sort()).toEqual(
        ['EISDIR', 'ELOOP', 'ENOENT', 'ENOTDIR', FILE_TOO_LARGE, NOT_A_REGULAR_FILE].sort(),
      );
      expect(open()).toBe(before);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  }, 30_000);
});
