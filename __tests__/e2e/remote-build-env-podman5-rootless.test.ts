/**
 * remote-build-env as a podman 5 user runs it: main and post as the ordinary test user with the trixie root's
 * ROOTLESS podman 5.4, entered by pivot_root (the kernel makes no user namespace for a chrooted process). Once as
 * a runner service runs it, without XDG_RUNTIME_DIR (the action then owns the runtime dir and its pause process)
 * and as a user who never ran podman (the action's calls are the first to meet the user's image store); once
 * with the session's XDG_RUNTIME_DIR and the user's store holding the image the build starts from. The scenarios
 * the host's rootless file runs too (rootless-jobs.ts), and main SIGKILLed at chosen state saves, each followed by
 * post.
 */
import { describe, expect, it } from '@jest/globals';
import { mkdtempSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pauseProcess } from '../../src/actions/remote-build-env/local-service.js';
import { isRunning } from '../../src/actions/remote-build-env/process-group.js';
import { laterRun } from '../support/cache-service.js';
import { importBusyboxImage } from '../support/images.js';
import { crashingMain } from '../support/kill-at-change.js';
import { leftovers } from '../support/leftovers.js';
import { mountsUnder, podmanVersions } from '../support/podman-matrix.js';
import {
  ACTION,
  CONTAINER_USER,
  rootlessJobs,
  rootlessScenarios,
  type StateSeen,
} from '../support/rootless-jobs.js';
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
      await jobs.userImage();
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
      await jobs.userImage();
      const job = await startJob({ 'cache-mounts': 'true', 'cache-key': 'p5-long' }, runnerTemp);
      expect(await build(job, 'l')).toBe('seen: l');
      const saved = jobs.cacheService.list().filter((e) => e.finalized).length;
      await expectNothingLeft(job, runnerTemp);
      expect(jobs.cacheService.list().filter((e) => e.finalized).length).toBe(saved + 1);
    });

    rootlessScenarios(jobs);

    it('isolate-storage, no XDG_RUNTIME_DIR: a container the job left running (podman run -d) does not keep post from removing it all', async () => {
      const runnerTemp = jobs.ownRunnerTemp();
      const job = await startJob({ 'isolate-storage': 'true' }, runnerTemp);
      const url = job.main.exportedEnv.CONTAINER_HOST!;
      await importBusyboxImage(jobs.pm, { url, name: jobs.image });
      // It ends on SIGTERM, so post's `podman rm --force` need not wait out its grace for a SIGKILL.
      await jobs.pm.remote(url, [
        'run',
        '-d',
        jobs.image,
        'sh',
        '-c',
        'trap "exit 0" TERM; sleep 600 & wait',
      ]);
      await expectNothingLeft(job, runnerTemp);
    });

    /** Only changes to main's state file count for the crash preload: the same sequence on every run. */
    const STATE_SAVES = { IMAGE_CI_TEST_CRASH_PATHS: '/state$' };
    const noSession = { XDG_RUNTIME_DIR: undefined };

    /**
     * Runs main whole under the crash preload (then its post) and returns its state saves in order, each with the
     * change right after which it is complete: a kill point. A save is as many changes as node's fs makes of it
     * (appendFileSync goes through writeFileSync), so the k-th save is complete at change k × that.
     */
    async function stateSavePoints(
      inputs: Record<string, string>,
      runnerTemp: string,
      main: string,
      env: Record<string, string | undefined> = noSession,
    ): Promise<Array<{ event: number; name: string; value: string }>> {
      const count = join(jobs.ownRunnerTemp(), 'count');
      const whole = await jobs.launchJob(
        inputs,
        runnerTemp,
        { ...env, ...STATE_SAVES, IMAGE_CI_TEST_CRASH_AFTER: '0', IMAGE_CI_TEST_CHANGES_FILE: count },
        main,
      );
      expect(whole.main.main.exitCode).toBe(0);
      expect((await whole.post()).exitCode).toBe(0);
      expect(await leftovers(runnerTemp)).toEqual([]);
      const saves = whole.main.main.stateSaves;
      const perSave = Number(await readFile(count, 'utf8')) / saves.length;
      expect(Number.isInteger(perSave)).toBe(true);
      return saves.map(([name, value], i) => ({ event: (i + 1) * perSave, name, value }));
    }

    /** The first point whose save of the run state has `key`. */
    function pointAt(points: Array<{ event: number; name: string; value: string }>, key: string): number {
      const point = points.find((p) => p.name === ACTION && key in (JSON.parse(p.value) as object));
      if (!point) throw new Error(`main never saved a run state with ${key}`);
      return point.event;
    }

    /**
     * Main SIGKILLed right after change `event` (of those `counted`: state saves by default), then post: what main
     * had recorded, and what post left.
     */
    async function killedAt(
      inputs: Record<string, string>,
      runnerTemp: string,
      main: string,
      event: number,
      counted = STATE_SAVES,
      env: Record<string, string | undefined> = noSession,
    ) {
      const job = await jobs.launchJob(
        inputs,
        runnerTemp,
        { ...env, ...counted, IMAGE_CI_TEST_CRASH_AFTER: String(event) },
        main,
      );
      const state = jobs.stateOf(job) as StateSeen & {
        service?: unknown;
        cache?: { matchedKey?: string };
        ready: boolean;
      };
      const post = await job.post();
      return {
        main: job.main.main.exitCode,
        recorded: {
          service: 'service' in state,
          restored: state.cache?.matchedKey !== undefined,
          ready: state.ready,
        },
        post: post.exitCode,
        stopped: post.lines
          .map((l) => l.text)
          .filter((l) => /^podman (service|pause process) \(pid \d+\)/.test(l)),
        warnings: post.warnings,
        left: await leftovers(runnerTemp),
        mounts: mountsUnder(podman, runnerTemp),
      };
    }

    const stopped = (what: string) =>
      expect.stringMatching(new RegExp(`^podman ${what} \\(pid \\d+\\) stopped\\.$`));

    it('main SIGKILLed right before it starts the service and right after it recorded the service (not yet answering), no XDG_RUNTIME_DIR, isolate-storage: post stops what runs and leaves no process, mount or dir', async () => {
      const inputs = { 'isolate-storage': 'true' };
      const main = crashingMain(jobs.ownRunnerTemp(), ACTION);
      const points = await stateSavePoints(inputs, jobs.ownRunnerTemp(), main);
      const serviceAt = pointAt(points, 'service');
      const before = points[points.findIndex((p) => p.event === serviceAt) - 1]!.event;
      const seen = [
        await killedAt(inputs, jobs.ownRunnerTemp(), main, before),
        await killedAt(inputs, jobs.ownRunnerTemp(), main, serviceAt),
      ];
      const clean = { main: 137, post: 0, warnings: [], left: [], mounts: [] };
      expect(seen).toEqual([
        { ...clean, recorded: { service: false, restored: false, ready: false }, stopped: [] },
        {
          ...clean,
          recorded: { service: true, restored: false, ready: false },
          stopped: [stopped('service'), stopped('pause process')],
        },
      ]);
    });

    it('the session’s XDG_RUNTIME_DIR, cache-mounts: main SIGKILLed right after it recorded the service: post stops the service, leaves the session’s pause process running and nothing else', async () => {
      const inputs = { 'cache-mounts': 'true', 'cache-key': 'p5-killed-session' };
      const env = { XDG_RUNTIME_DIR: jobs.pm.env.XDG_RUNTIME_DIR! };
      await jobs.userImage(); // the session's pause process runs from here on
      const session = await pauseProcess(env.XDG_RUNTIME_DIR, jobs.user.uid);
      expect(session).toBeDefined();
      const main = crashingMain(jobs.ownRunnerTemp(), ACTION);
      const serviceAt = pointAt(await stateSavePoints(inputs, jobs.ownRunnerTemp(), main, env), 'service');
      const runnerTemp = jobs.ownRunnerTemp();
      expect(await killedAt(inputs, runnerTemp, main, serviceAt, STATE_SAVES, env)).toEqual({
        main: 137,
        recorded: { service: true, restored: false, ready: false },
        post: 0,
        stopped: [stopped('service')],
        warnings: [],
        left: [],
        mounts: [],
      });
      expect(await isRunning(session!)).toBe(true);
    });

    it('cache-mounts written as container root and as a non-root user, no XDG_RUNTIME_DIR: main SIGKILLed right after the next run restored them (files of subordinate uids in place, no service yet): post removes them and leaves no process, mount or dir', async () => {
      const inputs = { 'cache-mounts': 'true', 'cache-key': 'p5-killed' };
      await jobs.userImage();
      const runnerTemp = jobs.ownRunnerTemp();
      const a = await jobs.startJob(inputs, runnerTemp, noSession);
      expect(await jobs.buildTwoMounts(a.main.exportedEnv, 'a')).toEqual([
        'root: 0:0 700 a',
        'user: 1000:1000 700 a',
      ]);
      expect((await a.post()).warnings).toEqual([]);
      // Later runs: the same RUNNER_TEMP path (the cache entry's version names it), its old contents gone.
      const nextRun = async () => {
        for (const aside of await laterRun([runnerTemp])) jobs.removeAfterAll(aside);
        jobs.ownRunnerTemp(runnerTemp);
      };
      await nextRun();
      const main = crashingMain(jobs.ownRunnerTemp(), ACTION);
      const restoredAt = pointAt(await stateSavePoints(inputs, runnerTemp, main), 'cache');
      await nextRun();
      const afterRestore = await killedAt(inputs, runnerTemp, main, restoredAt);
      await nextRun();
      // Right after the restored dir was moved to the service's TMPDIR, before main recorded the restore.
      const moved = await killedAt(inputs, runnerTemp, main, 1, {
        IMAGE_CI_TEST_CRASH_PATHS: '/tmp/buildah-cache(-\\d+)?$',
      });
      const clean = {
        main: 137,
        post: 0,
        stopped: [stopped('pause process')],
        warnings: [],
        left: [],
        mounts: [],
      };
      expect([afterRestore, moved]).toEqual([
        { ...clean, recorded: { service: false, restored: true, ready: false } },
        {
          ...clean,
          recorded: { service: false, restored: false, ready: false },
          // Main died holding the stage (moving the dir out is the restore's last step under the lock).
          warnings: [
            expect.stringMatching(/^removed the stale lock .*\.lock: its owner, pid \d+ on .*, is gone$/),
          ],
        },
      ]);
    });
  },
);
