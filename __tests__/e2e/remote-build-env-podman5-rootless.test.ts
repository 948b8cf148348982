/**
 * remote-build-env as a podman 5 user runs it: main and post as the ordinary test user with the trixie root's
 * ROOTLESS podman 5.4, entered by pivot_root (the kernel makes no user namespace for a chrooted process). Once as
 * a runner service runs it, without XDG_RUNTIME_DIR (the action then owns the runtime dir and its pause process)
 * and as a user who never ran podman (the action's calls are the first to meet the user's image store); once
 * with the session's XDG_RUNTIME_DIR and the user's store holding the image the build starts from.
 */
import { describe, expect, it } from '@jest/globals';
import { mkdtempSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pauseProcess } from '../../src/actions/remote-build-env/local-service.js';
import { isRunning } from '../../src/actions/remote-build-env/process-group.js';
import { laterRun } from '../support/cache-service.js';
import { importBusyboxImage } from '../support/images.js';
import { leftovers } from '../support/leftovers.js';
import { mountsUnder, podmanVersions } from '../support/podman-matrix.js';
import { CONTAINER_USER, rootlessJobs, rootlessScenarios } from '../support/rootless-jobs.js';
import type { SplitJob } from '../support/split-job.js';

describe.each(podmanVersions().filter((v) => v.root !== '/'))(
  '[$label] remote-build-env as an ordinary user with rootless podman 5 in the trixie root',
  (podman) => {
    const jobs = rootlessJobs(podman, { pivot: true });

    /** `runtimeDir`: the session's XDG_RUNTIME_DIR; none by default (a runner service). */
    function startJob(
      inputs: Record<string, string>,
      runnerTemp: string,
      runtimeDir?: string,
    ): Promise<SplitJob> {
      return jobs.startJob(inputs, runnerTemp, { XDG_RUNTIME_DIR: runtimeDir });
    }

    /** A build through the job's CONTAINER_HOST whose non-root RUN step adds `marker` to a cache mount; what it saw. */
    async function build(job: SplitJob, marker: string): Promise<string> {
      const env = job.main.exportedEnv;
      const ctx = join(jobs.pm.dir, `ctx-${marker}`);
      await mkdir(ctx);
      await writeFile(
        join(ctx, 'Containerfile'),
        `FROM ${jobs.image}\nUSER ${CONTAINER_USER}\nRUN --mount=type=cache,target=/u,uid=1000,gid=1000 ` +
          `touch /u/${marker} && echo "seen: $(ls /u | tr '\\n' ' ')"\n`,
      );
      const r = await jobs.pm.podman(['--remote', 'build', '--no-cache', ctx], { env, allowFailure: true });
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
      const runnerTemp = jobs.ownRunnerTemp();
      const inputs = { 'cache-mounts': 'true', 'cache-key': 'p5', 'isolate-storage': 'true' };
      const a = await startJob(inputs, runnerTemp);
      expect(a.main.outputs['cache-hit']).toBe('false');
      await importBusyboxImage(jobs.pm, { url: a.main.exportedEnv.CONTAINER_HOST!, name: jobs.image });
      expect(await build(a, 'a')).toBe('seen: a');
      await expectNothingLeft(a, runnerTemp);
      expect(jobs.cacheService.list().filter((e) => e.finalized).length).toBe(1);
      // Before: post's `podman unshare` opened the user's store first, which then kept the job's runtime dir as
      // its runroot for every later podman ('<RUNNER_TEMP>/ici-…/containers').
      const runRoot = await jobs.pm.podman(['info', '--format', '{{.Store.RunRoot}}']);
      expect(runRoot.stdout.trim()).toBe(join(jobs.pm.env.XDG_RUNTIME_DIR!, 'containers'));

      // The next run: the same RUNNER_TEMP path, its old contents gone (facts.md).
      for (const aside of await laterRun([runnerTemp])) jobs.removeAfterAll(aside);
      jobs.ownRunnerTemp(runnerTemp);
      const b = await startJob(inputs, runnerTemp);
      expect(b.main.outputs['cache-hit']).toBe('true');
      await importBusyboxImage(jobs.pm, { url: b.main.exportedEnv.CONTAINER_HOST!, name: jobs.image });
      expect(await build(b, 'b')).toBe('seen: a b');
      await expectNothingLeft(b, runnerTemp);
      expect(jobs.cacheService.list().filter((e) => e.finalized).length).toBe(2);
    });

    it('shared store, cache-mounts, the session’s XDG_RUNTIME_DIR: the build sees the user’s images, post saves the mounts and leaves nothing but the session’s own pause process', async () => {
      const runnerTemp = jobs.ownRunnerTemp();
      const session = await pauseProcess(jobs.pm.env.XDG_RUNTIME_DIR!, jobs.user.uid);
      expect(session).toBeDefined();
      const job = await startJob(
        { 'cache-mounts': 'true', 'cache-key': 'p5-shared' },
        runnerTemp,
        jobs.pm.env.XDG_RUNTIME_DIR!,
      );
      expect(await build(job, 'x')).toBe('seen: x');
      const saved = jobs.cacheService.list().filter((e) => e.finalized).length;
      const post = await job.post();
      expect(post.warnings).toEqual([]);
      expect(post.exitCode).toBe(0);
      expect(jobs.cacheService.list().filter((e) => e.finalized).length).toBe(saved + 1);
      expect(post.lines.map((l) => l.text).join('\n')).not.toContain('pause process');
      expect(await isRunning(session!)).toBe(true);
      expect(await leftovers(runnerTemp)).toEqual([]);
      expect(mountsUnder(podman, runnerTemp)).toEqual([]);
    });

    it('shared store, cache-mounts, no XDG_RUNTIME_DIR, a RUNNER_TEMP as long as a self-hosted runner’s: post saves the mounts and leaves nothing', async () => {
      // Longer than /home/runner/actions-runner/_work/_temp. Podman 4.3 refuses a `--runroot` over 50 characters
      // (remote-build-env-rootless.test.ts); this checks the unshare store's own storage.conf on podman 5.
      const runnerTemp = jobs.ownRunnerTemp(mkdtempSync(join(tmpdir(), 'ici-rt-long-runner-temp-')));
      const job = await startJob({ 'cache-mounts': 'true', 'cache-key': 'p5-long' }, runnerTemp);
      expect(await build(job, 'l')).toBe('seen: l');
      const saved = jobs.cacheService.list().filter((e) => e.finalized).length;
      await expectNothingLeft(job, runnerTemp);
      expect(jobs.cacheService.list().filter((e) => e.finalized).length).toBe(saved + 1);
    });

    rootlessScenarios(jobs);
  },
);
