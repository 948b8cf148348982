/**
 * Offline test images. There is no registry to pull from, so a tiny but real image is made from the busybox-static
 * binary (Debian package busybox-static): /bin/busybox plus a symlink per applet, a few empty dirs, tarred up and
 * `podman import`ed. About 1 MiB compressed; `sh`, `ls`, `dd`, `cat` and friends all work in RUN steps.
 */
import { copyFile, mkdir, mkdtemp, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exec } from '../../src/core/exec.js';
import { pathExists } from '../../src/core/files.js';
import type { PodmanTestEnv } from './podman.js';
import { runSharedDir } from './run-dir.js';

export const BUSYBOX = '/bin/busybox';
export const BUSYBOX_IMAGE = 'localhost/ici-busybox:latest';

let rootfsTar: Promise<string> | undefined;

/**
 * Built once per test run and busybox version: the path is named after the binary's size and mtime, written to
 * a temp name and renamed, so parallel test processes share it without ever reading half a file.
 */
async function makeRootfsTar(): Promise<string> {
  const bin = await stat(BUSYBOX);
  const tar = join(runSharedDir(), `ici-busybox-rootfs-${bin.size}-${Math.trunc(bin.mtimeMs)}.tar`);
  if (await pathExists(tar)) return tar;
  const work = await mkdtemp(join(tmpdir(), 'ici-bb-'));
  try {
    const rootfs = join(work, 'rootfs');
    for (const d of ['bin', 'etc', 'tmp', 'root', 'proc', 'sys', 'dev']) {
      await mkdir(join(rootfs, d), { recursive: true });
    }
    await copyFile(BUSYBOX, join(rootfs, 'bin/busybox'));
    const list = await exec(BUSYBOX, ['--list'], { timeoutMs: 10_000 });
    for (const applet of list.stdout.split('\n').map((s) => s.trim())) {
      if (applet && applet !== 'busybox') await symlink('busybox', join(rootfs, 'bin', applet));
    }
    await writeFile(join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    await writeFile(join(rootfs, 'etc/group'), 'root:x:0:\n');
    const partial = join(work, 'rootfs.tar');
    await exec('tar', ['-C', rootfs, '--owner=0', '--group=0', '--numeric-owner', '-cf', partial, '.'], {
      timeoutMs: 30_000,
    });
    await rename(partial, tar);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return tar;
}

/** The rootfs tarball, built once per test process. */
export function busyboxRootfsTar(): Promise<string> {
  rootfsTar ??= makeRootfsTar();
  return rootfsTar;
}

/**
 * Imports the busybox image into the test storage, or into a running service's storage when `url` is given
 * (`podman --url ... import` uploads the tarball). Returns the image name.
 */
export async function importBusyboxImage(
  testEnv: PodmanTestEnv,
  options: { url?: string; name?: string } = {},
): Promise<string> {
  const name = options.name ?? BUSYBOX_IMAGE;
  const tar = await busyboxRootfsTar();
  const args = ['import', '--change', 'CMD ["/bin/sh"]', tar, name];
  if (options.url) await testEnv.remote(options.url, args);
  else await testEnv.podman(args);
  return name;
}
