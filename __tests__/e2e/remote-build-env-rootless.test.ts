/**
 * remote-build-env on a runner whose user is not root: main and post run as the ordinary test user, so the
 * service is ROOTLESS podman (a user namespace mapping container uid 0 to that user and the rest to its
 * /etc/subuid range). Files a build writes as a non-root container user are then owned on the host by a
 * subordinate uid the runner's user cannot read or delete without entering that namespace.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { chownSync, mkdtempSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathExists } from '../../src/core/files.js';
import { CacheService, laterRun } from '../support/cache-service.js';
import { importBusyboxImage } from '../support/images.js';
import { leftovers } from '../support/leftovers.js';
import { createPodmanTestEnv, type PodmanTestEnv } from '../support/podman.js';
import { hostPodman, requireAvailable, stepScripts, testUser, type User } from '../support/podman-matrix.js';
import { startSplitJob, type SplitJob } from '../support/split-job.js';

const ACTION = 'remote-build-env';

/** The uid:gid a build's second RUN step runs as: it maps to a subordinate id on the host. */
const CONTAINER_USER = '1000:1000';

interface StateSeen {
  tmpdir: string;
  removeDirs: string[];
  runtimeDir?: string;
}

// Only the host's podman here: rootless podman 5 needs the trixie root entered by pivot_root (the kernel makes no
// user namespace for a chrooted process); remote-build-env-podman5-rootless.test.ts runs its scenarios that way.
describe.each([hostPodman()])('[$label] remote-build-env as an ordinary user (rootless podman)', (podman) => {
  let user: User;
  let pm: PodmanTestEnv;
  let image: string;
  let cacheService: CacheService;
  const jobs: SplitJob[] = [];
  const dirs: string[] = [];

  /** A RUNNER_TEMP the runner's user owns; short, because the service's socket lives below it. */
  function ownRunnerTemp(dir = mkdtempSync(join(tmpdir(), 'ici-rt-'))): string {
    chownSync(dir, user.uid, user.gid);
    if (!dirs.includes(dir)) dirs.push(dir);
    return dir;
  }

  async function startJob(
    inputs: Record<string, string>,
    runnerTemp: string,
    env: Record<string, string | undefined> = {},
  ): Promise<SplitJob> {
    const job = await startSplitJob({
      action: ACTION,
      ...stepScripts(podman, ACTION, pm.dir, user),
      inputs,
      env: { ...pm.env, ...cacheService.env(), ...env },
      runnerTemp,
    });
    jobs.push(job);
    expect(job.main.errors).toEqual([]);
    expect(job.main.main.exitCode).toBe(0);
    return job;
  }

  function stateOf(job: SplitJob): StateSeen {
    return JSON.parse(job.main.main.state[ACTION]!) as StateSeen;
  }

  /**
   * One build, two cache mounts: one written as container root, one as CONTAINER_USER; each gets a private (0700)
   * dir holding a 0600 file named `marker`. Returns what each step saw in its dir, and the dir's owner and mode.
   */
  async function build(env: Record<string, string>, marker: string): Promise<string[]> {
    const ctx = join(pm.dir, 'ctx');
    await mkdir(ctx, { recursive: true });
    const step = (dir: string, label: string) =>
      `mkdir -p ${dir}/private && touch ${dir}/private/$MARKER && chmod 700 ${dir}/private && ` +
      `chmod 600 ${dir}/private/$MARKER && echo "${label}: $(stat -c '%u:%g %a' ${dir}/private) ` +
      `$(ls ${dir}/private | tr '\\n' ' ')"`;
    await writeFile(
      join(ctx, 'Containerfile'),
      `FROM ${image}\nARG MARKER\n` +
        `RUN --mount=type=cache,target=/c,sharing=locked ${step('/c', 'root')}\n` +
        `USER ${CONTAINER_USER}\n` +
        `RUN --mount=type=cache,target=/u,uid=1000,gid=1000,sharing=locked ${step('/u', 'user')}\n`,
    );
    const r = await pm.podman(['--remote', 'build', '--no-cache', '--build-arg', `MARKER=${marker}`, ctx], {
      env,
      allowFailure: true,
    });
    const seen = r.stdout.split('\n').filter((l) => /^(root|user): /.test(l));
    if (r.exitCode !== 0 || seen.length !== 2) {
      throw new Error(`build ${marker} failed (${r.exitCode}):\n${r.stdout}\n${r.stderr}`);
    }
    return seen.map((l) => l.trim());
  }

  beforeAll(async () => {
    requireAvailable(podman);
    user = testUser();
    pm = await createPodmanTestEnv(podman, { user });
    image = await importBusyboxImage(pm);
    cacheService = await CacheService.start();
  });

  afterAll(async () => {
    for (const job of jobs) if (!job.posted) await job.post();
    await cacheService?.stop();
    await pm?.remove();
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  it('a chosen socket path in a dir the runner’s user cannot write (root’s) fails on `socket`, naming the path and the fix; post leaves that dir alone', async () => {
    const theirs = mkdtempSync(join(tmpdir(), 'ici-rs-'));
    dirs.push(theirs);
    await chmod(theirs, 0o755);
    const socket = join(theirs, 'build.sock');
    const job = await startSplitJob({
      action: ACTION,
      ...stepScripts(podman, ACTION, pm.dir, user),
      inputs: { socket },
      env: pm.env,
      runnerTemp: ownRunnerTemp(),
    });
    jobs.push(job);
    // Before (e127448): "EACCES: permission denied, symlink '<RUNNER_TEMP>/ici-…/socket-claim' -> '<socket>'".
    expect(job.main.errors).toEqual([
      `Input 'socket': cannot create ${socket} (EACCES); choose a path in a dir this user (uid ${user.uid}) can write.`,
    ]);
    expect((await job.post()).exitCode).toBe(0);
    expect(await readdir(theirs)).toEqual([]);
  });

  it('cache-mounts written as root and as a non-root container user are saved in post, restored (owners and modes) by the next run, and nothing stays behind', async () => {
    const runnerTemp = ownRunnerTemp();
    const inputs = { 'cache-mounts': 'true', 'cache-key': 'rootless' };
    const a = await startJob(inputs, runnerTemp);
    expect(a.main.outputs['cache-hit']).toBe('false');
    expect(await build(a.main.exportedEnv, 'a')).toEqual(['root: 0:0 700 a', 'user: 1000:1000 700 a']);
    const postA = await a.post();
    expect(postA.warnings).toEqual([]);
    expect(postA.exitCode).toBe(0);
    expect(cacheService.list().filter((e) => e.finalized).length).toBe(1);
    for (const dir of stateOf(a).removeDirs) expect(await pathExists(dir)).toBe(false);
    expect(await leftovers(runnerTemp)).toEqual([]);

    // The next run: the same RUNNER_TEMP path, its old contents gone (facts.md).
    for (const aside of await laterRun([runnerTemp])) dirs.push(aside);
    ownRunnerTemp(runnerTemp);
    const b = await startJob(inputs, runnerTemp);
    expect(b.main.outputs['cache-hit']).toBe('true');
    expect(await build(b.main.exportedEnv, 'b')).toEqual(['root: 0:0 700 a b', 'user: 1000:1000 700 a b']);
    const postB = await b.post();
    expect(postB.warnings).toEqual([]);
    const keys = cacheService.list().map((e) => e.key);
    expect(keys.length).toBe(2);
    expect(await leftovers(runnerTemp)).toEqual([]);

    // Owners and modes restored, then recorded again: a run without builds finds nothing changed.
    for (const aside of await laterRun([runnerTemp])) dirs.push(aside);
    ownRunnerTemp(runnerTemp);
    const c = await startJob(inputs, runnerTemp);
    expect(c.main.outputs['cache-matched-key']).toBe(keys[1]);
    const postC = await c.post();
    expect(postC.warnings).toEqual([]);
    expect(postC.lines.map((l) => l.text)).toContain(
      `Cache mounts: unchanged since ${keys[1]}, not saved again.`,
    );
    expect(cacheService.list().length).toBe(2);
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  it('a dir named in bytes that are no UTF-8, made by a non-root container user in a cache mount: post leaves it out and saves the rest', async () => {
    const runnerTemp = ownRunnerTemp();
    const inputs = { 'cache-mounts': 'true', 'cache-key': 'rootless-name' };
    const a = await startJob(inputs, runnerTemp);
    const ctx = join(pm.dir, 'ctx-name');
    await mkdir(ctx, { recursive: true });
    await writeFile(
      join(ctx, 'Containerfile'),
      `FROM ${image}\nUSER ${CONTAINER_USER}\n` +
        'RUN --mount=type=cache,target=/u,uid=1000,gid=1000 d="/u/$(printf \'d\\377\')" && ' +
        'mkdir "$d" && echo x > "$d/f" && echo kept > /u/kept\n',
    );
    await pm.podman(['--remote', 'build', '--no-cache', ctx], { env: a.main.exportedEnv });
    const saved = cacheService.list().length;
    const post = await a.post();
    // Before (e127448): the owners walk (names as text) never handed the dir over, so removing it failed and the
    // whole save was given up ('cache mounts not saved: EACCES: ...').
    expect(post.warnings).toEqual([]);
    expect(post.lines.map((l) => l.text).join('\n')).toMatch(/not saving 1 FIFO.*: u\/d\uFFFD\./);
    expect(cacheService.list().length).toBe(saved + 1);
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  it('isolate-storage, no cache-mounts, no XDG_RUNTIME_DIR (a runner service outside a login session): post removes the private store, the files of subordinate uids and podman’s pause process', async () => {
    const runnerTemp = ownRunnerTemp();
    const job = await startJob({ 'isolate-storage': 'true' }, runnerTemp, { XDG_RUNTIME_DIR: undefined });
    await importBusyboxImage(pm, { url: job.main.exportedEnv.CONTAINER_HOST!, name: image });
    expect(await build(job.main.exportedEnv, 'x')).toEqual(['root: 0:0 700 x', 'user: 1000:1000 700 x']);
    const post = await job.post();
    expect(post.warnings).toEqual([]);
    expect(post.exitCode).toBe(0);
    expect(await pathExists(stateOf(job).tmpdir)).toBe(false);
    // The pause process (whose environment names RUNNER_TEMP) is gone too.
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  it('shared store: post removes the container the job started through its service (rootless conmon, read as the same user), not one started beside it', async () => {
    const runnerTemp = ownRunnerTemp();
    const job = await startJob({}, runnerTemp);
    const url = job.main.exportedEnv.CONTAINER_HOST!;
    const ours = (
      await pm.remote(url, ['run', '-d', '--stop-signal', 'KILL', image, 'sleep', '600'])
    ).stdout.trim();
    const beside = (await pm.podman(['run', '-d', image, 'sleep', '600'])).stdout.trim();
    try {
      const post = await job.post();
      expect(post.warnings).toEqual([]);
      expect(post.exitCode).toBe(0);
      const running = (await pm.podman(['ps', '--quiet', '--no-trunc'])).stdout.split('\n');
      expect(running).not.toContain(ours);
      expect(running).toContain(beside);
    } finally {
      await pm.podman(['rm', '--force', '--time', '0', beside], { allowFailure: true });
    }
  });

  it('no XDG_RUNTIME_DIR, the pause process killed between main and post: post’s `podman unshare` removes the files of subordinate uids and the pause process it had to start again', async () => {
    const runnerTemp = ownRunnerTemp();
    const job = await startJob({ 'isolate-storage': 'true' }, runnerTemp, { XDG_RUNTIME_DIR: undefined });
    await importBusyboxImage(pm, { url: job.main.exportedEnv.CONTAINER_HOST!, name: image });
    expect(await build(job.main.exportedEnv, 'p')).toEqual(['root: 0:0 700 p', 'user: 1000:1000 700 p']);
    const runtimeDir = stateOf(job).runtimeDir!;
    const pid = Number(await readFile(join(runtimeDir, 'libpod/tmp/pause.pid'), 'utf8'));
    process.kill(pid, 'SIGKILL');
    const post = await job.post();
    // Before (a8ac78c): post looked for the pause process before removing the private store, whose files of
    // subordinate uids then needed a `podman unshare` that started a new one, left running ('catatonit -P').
    expect(post.warnings).toEqual([]);
    expect(post.exitCode).toBe(0);
    expect(await pathExists(stateOf(job).tmpdir)).toBe(false);
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  it('no XDG_RUNTIME_DIR, a RUNNER_TEMP as long as a self-hosted runner’s (`podman --runroot` takes at most 50 characters): post saves cache mounts written by subordinate uids and removes them', async () => {
    // Longer than /home/runner/actions-runner/_work/_temp (39), a runner installed as a service where it says.
    const runnerTemp = ownRunnerTemp(mkdtempSync(join(tmpdir(), 'ici-rt-long-runner-temp-')));
    const inputs = { 'cache-mounts': 'true', 'cache-key': 'rootless-long' };
    const job = await startJob(inputs, runnerTemp, { XDG_RUNTIME_DIR: undefined });
    expect(await build(job.main.exportedEnv, 'l')).toEqual(['root: 0:0 700 l', 'user: 1000:1000 700 l']);
    const saved = cacheService.list().length;
    const post = await job.post();
    // Before (a8ac78c): every `podman unshare` of the job failed, 'Error: the specified runroot is longer than 50
    // characters' (its throwaway store's `--runroot <RUNNER_TEMP>/ici-…/u`): cache mounts not saved, not emptied.
    expect(post.warnings).toEqual([]);
    expect(post.exitCode).toBe(0);
    expect(cacheService.list().length).toBe(saved + 1);
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  it('cache-mounts, a job that ran no build: post says there is nothing to save, without a warning', async () => {
    const runnerTemp = ownRunnerTemp();
    const job = await startJob({ 'cache-mounts': 'true', 'cache-key': 'rootless-none' }, runnerTemp);
    const post = await job.post();
    // Before (c3b67ed): 'cache mounts not saved: ... ENOENT: no such file or directory, open '<stage>/buildah-cache''
    // (handing over ownership of a dir no build made).
    expect(post.warnings).toEqual([]);
    expect(post.lines.map((l) => l.text)).toContain(
      'Cache mounts: nothing to save (no build used a cache mount).',
    );
    expect(await leftovers(runnerTemp)).toEqual([]);
  });
});
