/**
 * remote-build-env as a podman 5 user runs it: main and post as the ordinary test user with the trixie root's
 * ROOTLESS podman 5.4, entered by pivot_root (the kernel makes no user namespace for a chrooted process). Once as
 * a runner service runs it, without XDG_RUNTIME_DIR (the action then owns the runtime dir and its pause process)
 * and as a user who never ran podman (the action's calls are the first to meet the user's image store); once
 * with the session's XDG_RUNTIME_DIR and the user's store holding the image the build starts from.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { chownSync, mkdtempSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pauseProcess } from '../../src/actions/remote-build-env/local-service.js';
import { isRunning } from '../../src/actions/remote-build-env/process-group.js';
import { CacheService, laterRun } from '../support/cache-service.js';
import { importBusyboxImage } from '../support/images.js';
import { leftovers } from '../support/leftovers.js';
import { createPodmanTestEnv, type PodmanTestEnv } from '../support/podman.js';
import {
  mountsUnder,
  podmanVersions,
  requireAvailable,
  stepScripts,
  testUser,
  type User,
} from '../support/podman-matrix.js';
import { startSplitJob, type SplitJob } from '../support/split-job.js';

const ACTION = 'remote-build-env';

describe.each(podmanVersions().filter((v) => v.root !== '/'))(
  '[$label] remote-build-env as an ordinary user with rootless podman 5 in the trixie root',
  (podman) => {
    let user: User;
    let pm: PodmanTestEnv;
    let cacheService: CacheService;
    const jobs: SplitJob[] = [];
    const dirs: string[] = [];

    beforeAll(async () => {
      requireAvailable(podman);
      user = testUser();
      pm = await createPodmanTestEnv(podman, { user, pivot: true });
      cacheService = await CacheService.start();
    });

    afterAll(async () => {
      for (const job of jobs) if (!job.posted) await job.post();
      await cacheService?.stop();
      await pm?.remove();
      for (const dir of dirs) await rm(dir, { recursive: true, force: true });
    });

    /** `runtimeDir`: the session's XDG_RUNTIME_DIR; none by default (a runner service). */
    async function startJob(
      inputs: Record<string, string>,
      runnerTemp: string,
      runtimeDir?: string,
    ): Promise<SplitJob> {
      const job = await startSplitJob({
        action: ACTION,
        ...stepScripts(podman, ACTION, pm.dir, user, { pivot: true }),
        inputs,
        env: { ...pm.env, ...cacheService.env(), XDG_RUNTIME_DIR: runtimeDir },
        runnerTemp,
      });
      jobs.push(job);
      expect(job.main.errors).toEqual([]);
      expect(job.main.main.exitCode).toBe(0);
      return job;
    }

    /** A build through the job's CONTAINER_HOST whose non-root RUN step adds `marker` to a cache mount; what it saw. */
    async function build(job: SplitJob, marker: string): Promise<string> {
      const env = job.main.exportedEnv;
      const ctx = join(pm.dir, `ctx-${marker}`);
      await mkdir(ctx);
      await writeFile(
        join(ctx, 'Containerfile'),
        'FROM bb\nUSER 1000:1000\nRUN --mount=type=cache,target=/u,uid=1000,gid=1000 ' +
          `touch /u/${marker} && echo "seen: $(ls /u | tr '\\n' ' ')"\n`,
      );
      const r = await pm.podman(['--remote', 'build', '--no-cache', ctx], { env, allowFailure: true });
      const seen = r.stdout.split('\n').find((l) => l.startsWith('seen: '));
      if (r.exitCode !== 0 || !seen) {
        throw new Error(`build ${marker} failed (${r.exitCode}):\n${r.stdout}\n${r.stderr}`);
      }
      return seen.trim();
    }

    async function expectNothingLeft(job: SplitJob, runnerTemp: string): Promise<void> {
      const post = await job.post();
      expect(post.warnings).toEqual([]);
      expect(post.exitCode).toBe(0);
      expect(post.lines.map((l) => l.text)).toContainEqual(
        expect.stringMatching(/^podman pause process \(pid \d+\) stopped\.$/),
      );
      expect(await leftovers(runnerTemp)).toEqual([]);
      expect(mountsUnder(podman, runnerTemp)).toEqual([]);
    }

    it('isolate-storage and cache-mounts: main starts the service as the user, a cache-mount build works through CONTAINER_HOST, post saves the mounts for the next run and leaves nothing, the user’s own store untouched', async () => {
      const runnerTemp = mkdtempSync(join(tmpdir(), 'ici-rt-'));
      chownSync(runnerTemp, user.uid, user.gid);
      dirs.push(runnerTemp);
      const inputs = { 'cache-mounts': 'true', 'cache-key': 'p5', 'isolate-storage': 'true' };
      const a = await startJob(inputs, runnerTemp);
      expect(a.main.outputs['cache-hit']).toBe('false');
      await importBusyboxImage(pm, { url: a.main.exportedEnv.CONTAINER_HOST!, name: 'bb' });
      expect(await build(a, 'a')).toBe('seen: a');
      await expectNothingLeft(a, runnerTemp);
      expect(cacheService.list().filter((e) => e.finalized).length).toBe(1);
      // Before: post's `podman unshare` opened the user's store first, which then kept the job's runtime dir as
      // its runroot for every later podman ('<RUNNER_TEMP>/ici-…/containers').
      const runRoot = await pm.podman(['info', '--format', '{{.Store.RunRoot}}']);
      expect(runRoot.stdout.trim()).toBe(join(pm.env.XDG_RUNTIME_DIR!, 'containers'));

      // The next run: the same RUNNER_TEMP path, its old contents gone (facts.md).
      for (const aside of await laterRun([runnerTemp])) dirs.push(aside);
      chownSync(runnerTemp, user.uid, user.gid);
      const b = await startJob(inputs, runnerTemp);
      expect(b.main.outputs['cache-hit']).toBe('true');
      await importBusyboxImage(pm, { url: b.main.exportedEnv.CONTAINER_HOST!, name: 'bb' });
      expect(await build(b, 'b')).toBe('seen: a b');
      await expectNothingLeft(b, runnerTemp);
      expect(cacheService.list().filter((e) => e.finalized).length).toBe(2);
    });

    it('shared store, cache-mounts, the session’s XDG_RUNTIME_DIR: the build sees the user’s images, post saves the mounts and leaves nothing but the session’s own pause process', async () => {
      const runnerTemp = mkdtempSync(join(tmpdir(), 'ici-rt-'));
      chownSync(runnerTemp, user.uid, user.gid);
      dirs.push(runnerTemp);
      await importBusyboxImage(pm, { name: 'bb' });
      const session = await pauseProcess(pm.env.XDG_RUNTIME_DIR!, user.uid);
      expect(session).toBeDefined();
      const job = await startJob(
        { 'cache-mounts': 'true', 'cache-key': 'p5-shared' },
        runnerTemp,
        pm.env.XDG_RUNTIME_DIR!,
      );
      expect(await build(job, 'x')).toBe('seen: x');
      const saved = cacheService.list().filter((e) => e.finalized).length;
      const post = await job.post();
      expect(post.warnings).toEqual([]);
      expect(post.exitCode).toBe(0);
      expect(cacheService.list().filter((e) => e.finalized).length).toBe(saved + 1);
      expect(post.lines.map((l) => l.text).join('\n')).not.toContain('pause process');
      expect(await isRunning(session!)).toBe(true);
      expect(await leftovers(runnerTemp)).toEqual([]);
      expect(mountsUnder(podman, runnerTemp)).toEqual([]);
    });

    it('shared store, cache-mounts, no XDG_RUNTIME_DIR, a RUNNER_TEMP as long as a self-hosted runner’s: post saves the mounts and leaves nothing', async () => {
      // Longer than /home/runner/actions-runner/_work/_temp. Podman 4.3 refuses a `--runroot` over 50 characters
      // (remote-build-env-rootless.test.ts); this checks the unshare store's own storage.conf on podman 5.
      const runnerTemp = mkdtempSync(join(tmpdir(), 'ici-rt-long-runner-temp-'));
      chownSync(runnerTemp, user.uid, user.gid);
      dirs.push(runnerTemp);
      await importBusyboxImage(pm, { name: 'bb' });
      const job = await startJob({ 'cache-mounts': 'true', 'cache-key': 'p5-long' }, runnerTemp);
      expect(await build(job, 'l')).toBe('seen: l');
      const saved = cacheService.list().filter((e) => e.finalized).length;
      await expectNothingLeft(job, runnerTemp);
      expect(cacheService.list().filter((e) => e.finalized).length).toBe(saved + 1);
    });
  },
);
