/**
 * prune-simplestreams as shipped (dist/cli.js) where /proc is not mounted (a chroot, a sandbox without it): verify
 * checks kept files by their paths, as the rest of the file reading does, instead of reporting every one missing.
 * Needs root (unshare, mount), as the other tests that make users or mounts.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../support/harness.js';
import { SimplestreamsRepo, versionsOf } from '../support/simplestreams-fixture.js';

const CLI = join(REPO_ROOT, 'dist/cli.js');
const PRODUCT_DIR = 'images/debian/bookworm/amd64/default';
const base = mkdtempSync(join(tmpdir(), 'ici-prune-noproc-'));
afterAll(() => rmSync(base, { recursive: true, force: true }));

/** The CLI in a mount namespace of its own whose /proc is an empty tmpfs. */
function pruneWithoutProc(root: string) {
  const script = 'mount -t tmpfs none /proc && exec "$@"';
  const cli = [process.execPath, CLI, 'prune-simplestreams', '--path', root, '--keep-versions', '1'];
  cli.push('--grace-period', '0s', '--verify', 'sha256');
  return spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script, 'sh', ...cli], {
    encoding: 'utf8',
    timeout: 60_000,
  });
}

describe('verify without /proc', () => {
  it('finds the kept files, one behind a link into a pool of the repository, after deleting an old version', () => {
    const repo = new SimplestreamsRepo(join(base, 'pooled'), 'nested');
    repo.addVersion('debian:bookworm:default:amd64', '20240101_01:00');
    repo.addVersion('debian:bookworm:default:amd64', '20240201_01:00');
    repo.write();
    repo.moveBehindSymlink(`${PRODUCT_DIR}/20240201_01:00/rootfs.squashfs`, 'pool/rootfs.squashfs');
    const run = pruneWithoutProc(repo.root);
    expect(`${run.status} ${run.stderr}`).toMatch(/^0 /);
    expect(existsSync(join(repo.root, PRODUCT_DIR, '20240101_01:00'))).toBe(false);
    expect(versionsOf(repo.root, 'debian:bookworm:default:amd64')).toEqual(['20240201_01:00']);
  });
});
