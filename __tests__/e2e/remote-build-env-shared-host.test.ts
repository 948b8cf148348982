/**
 * remote-build-env (mode local) with two jobs on one runner host at once (two runner instances, each with its own
 * RUNNER_TEMP), real podman services: what one job's steps and post can do to the other's.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { createHash } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { lstat, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { acquireLock } from '../../src/core/atomic.js';
import { pathExists } from '../../src/core/files.js';
import { sleep } from '../../src/core/process.js';
import { REPO_ROOT } from '../support/harness.js';
import { createPodmanTestEnv, type PodmanTestEnv } from '../support/podman.js';
import { stepScripts } from '../support/podman-matrix.js';
import { startSplitJob, type SplitJob } from '../support/split-job.js';

const ACTION = 'remote-build-env';

let pm: PodmanTestEnv;
const temps: string[] = [];
const jobs: SplitJob[] = [];

/** Short (socket paths), under the run's TMPDIR (the leftovers check lists it), and removed after the tests. */
function newTemp(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  temps.push(dir);
  return dir;
}

async function startJob(
  inputs: Record<string, string>,
  env: Record<string, string>,
  runnerTemp: string,
): Promise<SplitJob> {
  const job = await startSplitJob({
    action: ACTION,
    ...stepScripts(pm.variant, ACTION, pm.dir),
    inputs,
    env: { ...pm.env, ...env },
    runnerTemp,
  });
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

beforeAll(async () => {
  pm = await createPodmanTestEnv();
});
afterAll(async () => {
  for (const job of jobs) if (!job.posted) await job.post();
  await pm?.remove();
  for (const dir of temps) await rm(dir, { recursive: true, force: true });
});

describe('remote-build-env, mode local, two jobs on one host (real podman, directory cache)', () => {
  it('two jobs given one socket path, the first still restoring cache mounts when the second starts: the second is refused, never served by or taking over the first one’s socket', async () => {
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
      startingA = startJob(
        { socket, 'cache-mounts': 'true', 'cache-key': 'shared-socket' },
        { IMAGE_CI_CACHE_DIR: newTemp('ici-rsc-') },
        tempA,
      );
      await pastSocketCheck(tempA);
      b = await startJob({ socket }, {}, tempB);
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

  it('main SIGKILLed right after each of its file changes up to the service start, with a chosen socket path: post removes the path it claimed, and only that', async () => {
    // Main under the crash preload (it kills at the N-th change: the claim's symlink, the state saved after it, ...).
    const wrapper = join(newTemp('ici-rs-'), 'main.mjs');
    const url = (path: string) => JSON.stringify(pathToFileURL(path).href);
    await writeFile(
      wrapper,
      `await import(${url(join(REPO_ROOT, '__tests__/support/crash-after-change.mjs'))});\n` +
        `await import(${url(join(REPO_ROOT, 'dist', ACTION, 'main.js'))});\n`,
    );
    const problems: string[] = [];
    let claimedAndKilled = 0;
    for (let event = 1; ; event++) {
      const dir = newTemp('ici-rs-');
      const socket = join(dir, 'build.sock');
      const job = await startSplitJob({
        action: ACTION,
        mainScript: wrapper,
        postScript: join(REPO_ROOT, 'dist', ACTION, 'post.js'),
        inputs: { socket },
        env: { ...pm.env, IMAGE_CI_TEST_CRASH_AFTER: String(event) },
        runnerTemp: newTemp('ici-rs-'),
      });
      jobs.push(job);
      const killed = job.main.main.exitCode === 137;
      if (killed && (await lstat(socket).catch(() => undefined))?.isSymbolicLink()) claimedAndKilled++;
      const post = await job.post();
      if (post.exitCode !== 0) problems.push(`killed at change ${event}: post exited ${post.exitCode}`);
      const left = await readdir(dir);
      if (left.length) problems.push(`killed at change ${event}: left ${left.join(', ')}`);
      // Past the service's start, the kill sweep in remote-build-env-kill.test.ts covers the rest.
      if (!killed || post.lines.some((l) => /^podman service \(pid \d+\)/.test(l.text))) break;
      if (event === 60) throw new Error('main made 60 changes without starting its service');
    }
    expect(problems).toEqual([]);
    expect(claimedAndKilled).toBeGreaterThan(0);
  }, 120_000);
});
