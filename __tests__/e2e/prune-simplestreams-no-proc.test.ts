/**
 * prune-simplestreams as shipped (dist/cli.js) where /proc is not mounted (a chroot, a sandbox without it): verify
 * checks kept files by their paths, as the rest of the file reading does, instead of reporting every one missing.
 * Needs root (unshare, mount), as the other tests that make users or mounts.
 */
import { afterAll, describe, expect, it } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../support/harness.js';
import { SimplestreamsRepo } from '../support/simplestreams-fixture.js';

const CLI = join(REPO_ROOT, 'dist/cli.js');
const VERSION_DIR = 'images/debian/bookworm/amd64/default/20240101_01:00';
const base = mkdtempSync(join(tmpdir(), 'ici-prune-noproc-'));
afterAll(() => rmSync(base, { recursive: true, force: true }));

/** The CLI in a mount namespace of its own whose /proc is an empty tmpfs. */
function pruneWithoutProc(root: string) {
  const script = 'mount -t tmpfs none /proc && exec "$@"';
  const cli = [process.execPath, CLI, 'prune-simplestreams', '--path', root, '--verify', 'sha256'];
  return spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script, 'sh', ...cli], {
    encoding: 'utf8',
    timeout: 60_000,
  });
}

describe('verify without /proc', () => {
  it('finds the kept files, one behind a link into a pool of the repository', () => {
    const repo = new SimplestreamsRepo(join(base, 'pooled'), 'nested');
    repo.addVersion('debian:bookworm:default:amd64', '20240101_01:00');
    repo.write();
    repo.moveBehindSymlink(`${VERSION_DIR}/rootfs.squashfs`, 'pool/rootfs.squashfs');
    const run = pruneWithoutProc(repo.root);
    expect(`${run.status} ${run.stderr}`).toMatch(/^0 /);
  });
});
