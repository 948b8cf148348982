/**
 * remote-build-env on a runner whose user is not root: main and post run as the ordinary test user, so the
 * service is ROOTLESS podman (a user namespace mapping container uid 0 to that user and the rest to its
 * /etc/subuid range). Files a build writes as a non-root container user are then owned on the host by a
 * subordinate uid the runner's user cannot read or delete without entering that namespace.
 */
import { describe, expect, it } from '@jest/globals';
import { mkdtempSync } from 'node:fs';
import { chmod, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathExists } from '../../src/core/files.js';
import { importBusyboxImage } from '../support/images.js';
import { leftovers } from '../support/leftovers.js';
import { hostPodman } from '../support/podman-matrix.js';
import { rootlessJobs, rootlessScenarios } from '../support/rootless-jobs.js';

// Only the host's podman here: rootless podman 5 needs the trixie root entered by pivot_root (the kernel makes no
// user namespace for a chrooted process); remote-build-env-podman5-rootless.test.ts runs its scenarios that way.
describe.each([hostPodman()])('[$label] remote-build-env as an ordinary user (rootless podman)', (podman) => {
  const jobs = rootlessJobs(podman);

  it('a chosen socket path in a dir the runner’s user cannot write (root’s) fails on `socket`, naming the path and the fix; post leaves that dir alone', async () => {
    const theirs = mkdtempSync(join(tmpdir(), 'ici-rs-'));
    jobs.removeAfterAll(theirs);
    await chmod(theirs, 0o755);
    const socket = join(theirs, 'build.sock');
    const job = await jobs.launchJob({ socket }, jobs.ownRunnerTemp());
    // Before (e127448): "EACCES: permission denied, symlink '<RUNNER_TEMP>/ici-…/socket-claim' -> '<socket>'".
    expect(job.main.errors).toEqual([
      `Input 'socket': cannot create ${socket} (EACCES); choose a path in a dir this user (uid ${jobs.user.uid}) can write.`,
    ]);
    expect((await job.post()).exitCode).toBe(0);
    expect(await readdir(theirs)).toEqual([]);
  });

  it('isolate-storage, no cache-mounts, no XDG_RUNTIME_DIR (a runner service outside a login session): post removes the private store, the files of subordinate uids and podman’s pause process', async () => {
    const runnerTemp = jobs.ownRunnerTemp();
    const job = await jobs.startJob({ 'isolate-storage': 'true' }, runnerTemp, {
      XDG_RUNTIME_DIR: undefined,
    });
    await importBusyboxImage(jobs.pm, { url: job.main.exportedEnv.CONTAINER_HOST!, name: jobs.image });
    expect(await jobs.buildTwoMounts(job.main.exportedEnv, 'x')).toEqual([
      'root: 0:0 700 x',
      'user: 1000:1000 700 x',
    ]);
    const post = await job.post();
    expect(post.warnings).toEqual([]);
    expect(post.exitCode).toBe(0);
    expect(await pathExists(jobs.stateOf(job).tmpdir)).toBe(false);
    // The pause process (whose environment names RUNNER_TEMP) is gone too.
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  it('shared store: post removes the container the job started through its service (rootless conmon, read as the same user), not one started beside it', async () => {
    const image = await jobs.userImage();
    const job = await jobs.startJob({}, jobs.ownRunnerTemp());
    const url = job.main.exportedEnv.CONTAINER_HOST!;
    const ours = (
      await jobs.pm.remote(url, ['run', '-d', '--stop-signal', 'KILL', image, 'sleep', '600'])
    ).stdout.trim();
    const beside = (await jobs.pm.podman(['run', '-d', image, 'sleep', '600'])).stdout.trim();
    try {
      const post = await job.post();
      expect(post.warnings).toEqual([]);
      expect(post.exitCode).toBe(0);
      const running = (await jobs.pm.podman(['ps', '--quiet', '--no-trunc'])).stdout.split('\n');
      expect(running).not.toContain(ours);
      expect(running).toContain(beside);
    } finally {
      await jobs.pm.podman(['rm', '--force', '--time', '0', beside], { allowFailure: true });
    }
  });

  it('no XDG_RUNTIME_DIR, the pause process killed between main and post: post’s `podman unshare` removes the files of subordinate uids and the pause process it had to start again', async () => {
    const runnerTemp = jobs.ownRunnerTemp();
    const job = await jobs.startJob({ 'isolate-storage': 'true' }, runnerTemp, {
      XDG_RUNTIME_DIR: undefined,
    });
    await importBusyboxImage(jobs.pm, { url: job.main.exportedEnv.CONTAINER_HOST!, name: jobs.image });
    expect(await jobs.buildTwoMounts(job.main.exportedEnv, 'p')).toEqual([
      'root: 0:0 700 p',
      'user: 1000:1000 700 p',
    ]);
    const runtimeDir = jobs.stateOf(job).runtimeDir!;
    const pid = Number(await readFile(join(runtimeDir, 'libpod/tmp/pause.pid'), 'utf8'));
    process.kill(pid, 'SIGKILL');
    const post = await job.post();
    // Before (a8ac78c): post looked for the pause process before removing the private store, whose files of
    // subordinate uids then needed a `podman unshare` that started a new one, left running ('catatonit -P').
    expect(post.warnings).toEqual([]);
    expect(post.exitCode).toBe(0);
    expect(await pathExists(jobs.stateOf(job).tmpdir)).toBe(false);
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  it('no XDG_RUNTIME_DIR, a RUNNER_TEMP as long as a self-hosted runner’s (`podman --runroot` takes at most 50 characters): post saves cache mounts written by subordinate uids and removes them', async () => {
    // Longer than /home/runner/actions-runner/_work/_temp (39), a runner installed as a service where it says.
    const runnerTemp = jobs.ownRunnerTemp(mkdtempSync(join(tmpdir(), 'ici-rt-long-runner-temp-')));
    await jobs.userImage();
    const inputs = { 'cache-mounts': 'true', 'cache-key': 'rootless-long' };
    const job = await jobs.startJob(inputs, runnerTemp, { XDG_RUNTIME_DIR: undefined });
    expect(await jobs.buildTwoMounts(job.main.exportedEnv, 'l')).toEqual([
      'root: 0:0 700 l',
      'user: 1000:1000 700 l',
    ]);
    const saved = jobs.cacheService.list().length;
    const post = await job.post();
    // Before (a8ac78c): every `podman unshare` of the job failed, 'Error: the specified runroot is longer than 50
    // characters' (its throwaway store's `--runroot <RUNNER_TEMP>/ici-…/u`): cache mounts not saved, not emptied.
    expect(post.warnings).toEqual([]);
    expect(post.exitCode).toBe(0);
    expect(jobs.cacheService.list().length).toBe(saved + 1);
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  it('cache-mounts, a job that ran no build: post says there is nothing to save, without a warning', async () => {
    const runnerTemp = jobs.ownRunnerTemp();
    const job = await jobs.startJob({ 'cache-mounts': 'true', 'cache-key': 'rootless-none' }, runnerTemp);
    const post = await job.post();
    // Before (c3b67ed): 'cache mounts not saved: ... ENOENT: no such file or directory, open '<stage>/buildah-cache''
    // (handing over ownership of a dir no build made).
    expect(post.warnings).toEqual([]);
    expect(post.lines.map((l) => l.text)).toContain(
      'Cache mounts: nothing to save (no build used a cache mount).',
    );
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  rootlessScenarios(jobs);
});
