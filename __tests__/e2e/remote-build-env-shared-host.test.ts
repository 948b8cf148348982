/**
 * remote-build-env (mode local) with two jobs on one runner host at once (two runner instances, each with its own
 * RUNNER_TEMP), real podman services: what one job's steps and post can do to the other's.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { createHash } from 'node:crypto';
import { lstat, readdir, readFile, readlink, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { acquireLock } from '../../src/core/atomic.js';
import { pathExists } from '../../src/core/files.js';
import { sleep } from '../../src/core/process.js';
import { REPO_ROOT } from '../support/harness.js';
import { crashingMain } from '../support/kill-at-change.js';
import { tempDirForFile } from '../support/run-dir.js';
import { createPodmanTestEnv, type PodmanTestEnv } from '../support/podman.js';
import { hostPodman, requireAvailable, type PodmanVariant } from '../support/podman-matrix.js';
import { startSplitJob, startSplitJobOn, type SplitJob } from '../support/split-job.js';

const ACTION = 'remote-build-env';

const jobs: SplitJob[] = [];
const newTemp = tempDirForFile;

/** Posted after the tests if a failed test did not. */
function tracked(job: SplitJob): SplitJob {
  jobs.push(job);
  return job;
}

/** Resolves once main has made its service's TMPDIR (`<RUNNER_TEMP>/ici-*∕tmp`): it is past the socket check. */
async function pastSocketCheck(runnerTemp: string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    for (const name of await readdir(runnerTemp)) {
      if (name.startsWith('ici-') && (await pathExists(join(runnerTemp, name, 'tmp')))) return;
    }
    await sleep(100);
  }
  throw new Error(`main made no service TMPDIR in ${runnerTemp} within 30 s`);
}

/** One row's podman set-up, for its describe block; jobs left unposted by a failed test are posted first. */
function podmanFor(podman: PodmanVariant): () => PodmanTestEnv {
  let pm: PodmanTestEnv | undefined;
  beforeAll(async () => {
    requireAvailable(podman);
    pm = await createPodmanTestEnv(podman);
  });
  afterAll(async () => {
    for (const job of jobs.splice(0)) if (!job.posted) await job.post();
    await pm?.remove();
  });
  return () => pm!;
}

// The host's podman only (the suite's time budget): podman 5.4.2 binds over the claim too (checked with these
// tests on podmanVersions()); the kill test runs the host's node with the crash preload.
describe.each([hostPodman()])(
  '[$label] remote-build-env, mode local, a chosen socket path on a host running other jobs (real podman, directory cache)',
  (podman) => {
    const podmanEnv = podmanFor(podman);
    it('two jobs given one socket path, the first still restoring cache mounts when the second starts: the second is refused, never served by or taking over the first one’s socket', async () => {
      const pm = podmanEnv();
      const socket = join(newTemp('ici-rs-'), 'build.sock');
      const tempA = newTemp('ici-rs-');
      const tempB = newTemp('ici-rs-');
      // Another run of A's workflow holds A's cache stage (it is saving): A waits in its restore, before its service.
      const id = createHash('sha256').update('shared-socket').digest('hex').slice(0, 8);
      const held = await acquireLock(join(tempA, `ici-rbe-${id}.lock`), {
        timeoutMs: 0,
        purpose: 'test: another run saving',
      });
      let startingA: Promise<SplitJob>;
      let b: SplitJob;
      try {
        startingA = startSplitJobOn(
          pm,
          ACTION,
          { socket, 'cache-mounts': 'true', 'cache-key': 'shared-socket' },
          { IMAGE_CI_CACHE_DIR: newTemp('ici-rsc-') },
          tempA,
        ).then(tracked);
        await pastSocketCheck(tempA);
        b = tracked(await startSplitJobOn(pm, ACTION, { socket }, {}, tempB));
      } finally {
        await held.release();
      }
      const a = await startingA;
      expect(a.main.errors).toEqual([]);
      expect(a.main.main.exitCode).toBe(0);
      // Before: B's service bound the free path and answered (exit 0); A's service then unlinked B's socket and
      // bound its own, so B's later steps were served by A's service and B's post removed A's socket.
      expect(b.main.errors).toEqual([
        `Input 'socket': ${socket} is already in use; choose another path or remove it.`,
      ]);
      expect(b.main.main.exitCode).not.toBe(0);
      expect(b.main.exportedEnv.CONTAINER_HOST).toBeUndefined();

      // B's post (it runs whatever main did) leaves A's socket alone; A's steps still reach A's service.
      expect((await b.post()).exitCode).toBe(0);
      const info = await pm.podman(['--remote', 'info', '--format', '{{.Host.RemoteSocket.Path}}'], {
        env: a.main.exportedEnv,
      });
      expect(info.stdout.trim()).toContain(socket);
      expect((await a.post()).exitCode).toBe(0);
      expect(await pathExists(socket)).toBe(false);
      expect(await readdir(tempA)).toEqual([]);
      expect(await readdir(tempB)).toEqual([]);
    }, 90_000);

    it('main SIGKILLed right before the claim of a chosen socket path, right after it, and right after recording it: post removes the path it claimed, and a claim that failed leaves the path alone', async () => {
      const pm = podmanEnv();
      // Main under the crash preload (it kills at the N-th change: the claim's symlink, the state saved after it, ...).
      const wrapper = crashingMain(newTemp('ici-rs-'), ACTION);
      const run = async (socket: string, env: Record<string, string>) => {
        const job = await startSplitJob({
          action: ACTION,
          mainScript: wrapper,
          postScript: join(REPO_ROOT, 'dist', ACTION, 'post.js'),
          inputs: { socket },
          env: { ...pm.env, ...env },
          runnerTemp: newTemp('ici-rs-'),
        });
        return tracked(job);
      };
      // Where the claim falls: a main whose claim fails (a stale claim is there) makes its changes up to it.
      const counted = newTemp('ici-rs-');
      const stale = join(counted, 'build.sock');
      await symlink(join(counted, 'gone'), stale);
      const count = join(counted, 'count');
      const refused = await run(stale, { IMAGE_CI_TEST_CRASH_AFTER: '0', IMAGE_CI_TEST_CHANGES_FILE: count });
      expect(refused.main.errors).toEqual([expect.stringMatching(/^Input 'socket': .* is already in use/)]);
      expect((await refused.post()).exitCode).toBe(0);
      expect(await readlink(stale)).toBe(join(counted, 'gone'));
      const beforeClaim = Number(await readFile(count, 'utf8'));

      // Killed right before the claim, right after it, and right after the state recording it.
      const seen: string[] = [];
      for (const event of [beforeClaim, beforeClaim + 1, beforeClaim + 2]) {
        const dir = newTemp('ici-rs-');
        const socket = join(dir, 'build.sock');
        const job = await run(socket, { IMAGE_CI_TEST_CRASH_AFTER: String(event) });
        const at = (await lstat(socket).catch(() => undefined))?.isSymbolicLink() ? 'claimed' : 'free';
        const post = await job.post();
        seen.push(`${job.main.main.exitCode} ${at}, post ${post.exitCode}, left [${await readdir(dir)}]`);
      }
      // The kill sweep in remote-build-env-kill.test.ts covers the rest of main.
      expect(seen).toEqual([
        '137 free, post 0, left []',
        '137 claimed, post 0, left []',
        '137 claimed, post 0, left []',
      ]);
    }, 120_000);

    it('post run a second time after another job took the freed path: the other job’s socket stays and still answers', async () => {
      const pm = podmanEnv();
      const socket = join(newTemp('ici-rs-'), 'build.sock');
      const a = tracked(await startSplitJobOn(pm, ACTION, { socket }, {}, newTemp('ici-rs-')));
      expect(a.main.errors).toEqual([]);
      expect((await a.post()).exitCode).toBe(0);
      const b = tracked(await startSplitJobOn(pm, ACTION, { socket }, {}, newTemp('ici-rs-')));
      expect(b.main.errors).toEqual([]);

      expect((await a.post()).exitCode).toBe(0);
      // Before (e127448): A's second post removed the path whatever was there (it had claimed it once), so B lost its socket.
      expect((await lstat(socket).catch(() => undefined))?.isSocket()).toBe(true);
      const info = await pm.podman(['--remote', 'info', '--format', '{{.Host.RemoteSocket.Path}}'], {
        env: b.main.exportedEnv,
      });
      expect(info.stdout.trim()).toContain(socket);
      expect((await b.post()).exitCode).toBe(0);
      expect(await pathExists(socket)).toBe(false);
    }, 90_000);
  },
);
