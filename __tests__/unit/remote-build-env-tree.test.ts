/**
 * Names that are no UTF-8 in a cache-mount dir as post finds it (tree.ts, fingerprint.ts), on the real
 * filesystem: a build can name files in any bytes, and Node's text names turn odd bytes into U+FFFD.
 */
import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { mkdtempSync } from 'node:fs';
import { lstat, mkdir, readdir, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fingerprintDir, removeUnrestorable } from '../../src/actions/remote-build-env/fingerprint.js';
import { walk } from '../../src/actions/remote-build-env/tree.js';
import { exec } from '../../src/core/exec.js';

let dir: string;

/** `name` below `dir` as bytes: latin1 keeps each char code as one byte, so '\xff' is the byte 0xff. */
function raw(name: string): Buffer {
  return Buffer.concat([Buffer.from(`${dir}/`), Buffer.from(name, 'latin1')]);
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'ici-tree-'));
});
afterEach(async () => {
  // rm(1): a tree deeper than PATH_MAX left by a failed test is beyond Node's rm.
  await exec('rm', ['-rf', '--', dir], { timeoutMs: 20_000 });
});

describe('remote-build-env cache-mount trees with names that are no UTF-8', () => {
  it('a FIFO named in other bytes beside a file really named with U+FFFD: post removes the FIFO (a restore refuses it), not the file', async () => {
    await writeFile(join(dir, 'p\uFFFD'), 'kept\n');
    // Node has no mkfifo; printf makes the byte.
    await exec('sh', ['-c', `mkfifo "$(printf '%s/p\\377' "$0")"`, dir], { timeoutMs: 10_000 });
    // Before: both read back as 'p\uFFFD', both looked up as the file: the FIFO was saved, and every restore
    // of that entry refused it.
    expect(await removeUnrestorable(dir)).toEqual(['p\uFFFD']);
    const left = await readdir(dir, { encoding: 'buffer' });
    expect(left.map((n) => n.toString('hex'))).toEqual([Buffer.from('p\uFFFD').toString('hex')]);
    expect((await lstat(join(dir, 'p\uFFFD'))).isFile()).toBe(true);
  });

  it('a dir named in other bytes (with what it holds) and a symlink pointing in other bytes are removed; the rest is kept and fingerprinted', async () => {
    await mkdir(raw('d\xfe'));
    await writeFile(Buffer.concat([raw('d\xfe'), Buffer.from('/f')]), 'x');
    await writeFile(join(dir, 'kept'), 'kept\n');
    await symlink(Buffer.from('t\xfd', 'latin1'), join(dir, 'link'));
    await symlink('kept', join(dir, 'good-link'));
    expect((await removeUnrestorable(dir)).sort()).toEqual(['d\uFFFD', 'link']);
    expect((await readdir(dir)).sort()).toEqual(['good-link', 'kept']);
    expect(await fingerprintDir(dir)).toMatch(/^[0-9a-f]{64}$/);
  });

  it('a dir tree nested deeper than PATH_MAX: post removes what no path can name and keeps and fingerprints the rest', async () => {
    await writeFile(join(dir, 'kept'), 'kept\n');
    // 30 dirs of 200 characters: made in two halves, the second from inside the first, as no path names it all.
    const half = Array.from({ length: 15 }, () => 'd'.repeat(200)).join('/');
    await exec(
      'sh',
      ['-c', 'mkdir -p "$0/$1" && cd "$0/$1" && mkdir -p "$1" && echo x > "$1/f"', dir, half],
      {
        timeoutMs: 20_000,
      },
    );
    // Before (e127448): ENAMETOOLONG from lstat, and the whole save was given up.
    const removed = await removeUnrestorable(dir);
    expect(removed).toHaveLength(1);
    expect(removed[0]).toMatch(/^…[d/]{200}$/);
    expect(await fingerprintDir(dir)).toMatch(/^[0-9a-f]{64}$/);
    expect(await readdir(dir)).toEqual(['d'.repeat(200), 'kept']);
    // Everything left is reachable by path, so the walks of a restore can check it.
    const paths: string[] = [];
    await walk(dir, '', async (path) => void paths.push(path));
    expect(Math.max(...paths.map((p) => Buffer.byteLength(join(dir, p))))).toBeLessThan(4096);
  });

  it('a walk without a handler for them fails naming the entry, rather than looking up another file or none', async () => {
    await writeFile(raw('x\x1b[2J\xff'), 'x');
    await expect(walk(dir, '', async () => undefined)).rejects.toThrow(
      'x\u001b[2J\uFFFD is named in bytes that are no UTF-8',
    );
  });
});
