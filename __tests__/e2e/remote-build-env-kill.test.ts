/**
 * remote-build-env (mode local) against kills and signals, with real podman services: main SIGKILLed at every
 * moment of its startup and then post run as a separate process (what the runner does after a crash or a
 * cancelled job), and the CLI signalled before it was ready and again while it cleans up.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { acquireLock } from '../../src/core/atomic.js';
import { mapLimit } from '../../src/core/pool.js';
import { CacheService } from '../support/cache-service.js';
import { CliProcess, killMainOptions, killPoints, leftovers } from '../support/leftovers.js';
import { sleep } from '../../src/core/process.js';
import { createPodmanTestEnv, type PodmanTestEnv } from '../support/podman.js';
import { startSplitJob } from '../support/split-job.js';

const ACTION = 'remote-build-env';
/** The line main prints right before it starts the service. */
const STARTING = /^Starting podman /;

let pm: PodmanTestEnv;
const runnerTemps: string[] = [];

/** Short (socket paths), under the run's TMPDIR (the leftovers check lists it), and removed after the tests. */
function newRunnerTemp(): string {
  const dir = mkdtempSync(join(tmpdir(), 'ici-rk-'));
  runnerTemps.push(dir);
  return dir;
}

beforeAll(async () => {
  pm = await createPodmanTestEnv();
});
afterAll(async () => {
  await pm?.remove();
  for (const dir of runnerTemps) await rm(dir, { recursive: true, force: true });
});

/** Harness options for kill-main.mjs with the test podman env added. */
function withEnv(options: { mainScript: string; env: Record<string, string> }) {
  return { mainScript: options.mainScript, env: { ...pm.env, ...options.env } };
}

/** The CLI for one test, in its own RUNNER_TEMP. */
function startCli(): { cli: CliProcess; runnerTemp: string } {
  const runnerTemp = newRunnerTemp();
  return { cli: new CliProcess(ACTION, [], { ...pm.env, RUNNER_TEMP: runnerTemp }), runnerTemp };
}

describe('remote-build-env, mode local, killed and signalled (real podman services)', () => {
  it('main SIGKILLed at 40 moments across its startup, each followed by post: no process, socket or dir left', async () => {
    // One whole main tells where its phases fall here and now; the kill points are spread over them.
    const calibration = newRunnerTemp();
    const report = join(calibration, '..', `${basename(calibration)}.timing.json`);
    const whole = await startSplitJob({
      action: ACTION,
      inputs: {},
      runnerTemp: calibration,
      ...withEnv(killMainOptions(ACTION, STARTING, undefined, report)),
    });
    expect(whole.main.main.exitCode).toBe(0);
    expect((await whole.post()).exitCode).toBe(0);
    expect(await leftovers(calibration)).toEqual([]);
    const timing = JSON.parse(await readFile(report, 'utf8')) as { lineMs: number; endMs: number };
    await rm(report);

    const problems: string[] = [];
    let killedWithService = 0;
    // Two jobs at a time, each in its own RUNNER_TEMP: jest runs one file at a time on two CPUs, and the kill
    // delays count from main's own start or line, so a neighbour's load shifts no point out of its phase.
    await mapLimit(killPoints(timing.lineMs, timing.endMs), 2, async (point) => {
      const runnerTemp = newRunnerTemp();
      const job = await startSplitJob({
        action: ACTION,
        inputs: {},
        runnerTemp,
        ...withEnv(killMainOptions(ACTION, STARTING, point)),
      });
      const post = await job.post();
      const where = `killed ${point.delayMs} ms after ${point.afterLine ? 'the start line' : 'start'}`;
      if (post.exitCode !== 0) problems.push(`${where}: post exited ${post.exitCode}`);
      const left = await leftovers(runnerTemp);
      if (left.length) problems.push(`${where} (main exit ${job.main.main.exitCode}): ${left.join('; ')}`);
      const killed = job.main.main.exitCode === 137;
      if (killed && post.lines.some((l) => /^podman service \(pid \d+\)/.test(l.text))) killedWithService++;
    });
    expect(problems).toEqual([]);
    // The sweep reached the part of startup where a service runs (else it proved nothing about it).
    expect(killedWithService).toBeGreaterThan(0);
  }, 900_000);

  it('cache-mounts: main SIGKILLed while it holds the cache-key stage does not block the next run, and post leaves nothing', async () => {
    const cacheService = await CacheService.start();
    try {
      const runnerTemp = newRunnerTemp();
      const inputs = { 'cache-mounts': 'true', 'cache-key': 'e2e-killed-in-restore' };
      const env = { ...pm.env, ...cacheService.env() };
      cacheService.hang(['GetCacheEntryDownloadURL']); // the restore waits, holding the stage lock
      const kill = killMainOptions(ACTION, /^Restoring cache /, { afterLine: true, delayMs: 200 });
      const killed = await startSplitJob({
        action: ACTION,
        inputs,
        runnerTemp,
        mainScript: kill.mainScript,
        env: { ...env, ...kill.env },
      });
      expect(killed.main.main.exitCode).toBe(137);
      expect((await readdir(runnerTemp)).filter((n) => n.endsWith('.lock'))).toHaveLength(1);
      cacheService.heal();
      cacheService.dropHung();

      // Its owner is gone: the next run with this cache-key takes the lock over at once.
      const next = await startSplitJob({ action: ACTION, inputs, runnerTemp, env });
      expect(next.main.main.exitCode).toBe(0);
      expect(next.main.warnings).toEqual([
        expect.stringMatching(/^removed the stale lock .*\.lock: its owner, pid \d+ on .*, is gone$/),
      ]);
      for (const job of [killed, next]) expect((await job.post()).exitCode).toBe(0);
      expect(await leftovers(runnerTemp)).toEqual([]);
    } finally {
      await cacheService.stop();
    }
  }, 120_000);

  it('cache-mounts, CLI: SIGINT while it waits for the stage another run holds ends the wait at once (exit 1, nothing left)', async () => {
    const runnerTemp = newRunnerTemp();
    const cacheDir = mkdtempSync(join(tmpdir(), 'ici-rk-cache-'));
    const id = createHash('sha256').update('held-key').digest('hex').slice(0, 8);
    const other = await acquireLock(join(runnerTemp, `ici-rbe-${id}.lock`), {
      timeoutMs: 0,
      purpose: 'test: another run restoring',
    });
    try {
      const cli = new CliProcess(
        ACTION,
        ['--cache-mounts', '--cache-key', 'held-key', '--cache-dir', cacheDir],
        { ...pm.env, RUNNER_TEMP: runnerTemp },
      );
      await cli.waitFor(/Waiting for .*\.lock \(another run with this cache-key/);
      cli.signal('SIGINT');
      expect(await cli.exited).toBe(1);
      expect(cli.stderr).toContain('interrupted by SIGINT before it was ready');
    } finally {
      await other.release();
      await rm(cacheDir, { recursive: true, force: true });
    }
    expect(await leftovers(runnerTemp)).toEqual([]);
  }, 120_000);

  it('CLI: SIGINT or SIGTERM before the service is ready stops and removes everything (exit 1)', async () => {
    let beforeReady = 0;
    for (const [signal, delayMs] of [
      ['SIGINT', 0],
      ['SIGTERM', 0],
      ['SIGINT', 150],
      ['SIGTERM', 400],
    ] as const) {
      const { cli, runnerTemp } = startCli();
      await cli.waitFor(/Starting podman/);
      await new Promise((r) => setTimeout(r, delayMs));
      cli.signal(signal);
      const code = await cli.exited;
      // Whether the signal came before "ready" is the CLI's to say: its "Ready." line may still be on its way to
      // us when the signal lands.
      const interrupted = cli.stderr.includes(`interrupted by ${signal} before it was ready`);
      if (interrupted) beforeReady++;
      else expect(cli.stderr).toContain('Ready.');
      expect({ signal, delayMs, code, left: await leftovers(runnerTemp) }).toEqual({
        signal,
        delayMs,
        code: interrupted ? 1 : 0,
        left: [],
      });
    }
    // The sweep reached startup itself at least once (else it proved nothing about signals before ready).
    expect(beforeReady).toBeGreaterThan(0);
  }, 300_000);

  it('CLI: more signals while it cleans up do not cut the cleanup short (exit 0, nothing left)', async () => {
    const { cli, runnerTemp } = startCli();
    await cli.waitFor(/Press Ctrl-C/);
    cli.signal('SIGINT');
    await new Promise((r) => setTimeout(r, 20));
    cli.signal('SIGTERM');
    cli.signal('SIGINT');
    await new Promise((r) => setTimeout(r, 50));
    cli.signal('SIGHUP');
    expect(await cli.exited).toBe(0);
    expect(cli.stderr).toMatch(/podman service \(pid \d+\) stopped\./);
    expect(await leftovers(runnerTemp)).toEqual([]);
  }, 120_000);

  it('CLI: its log reader gone (a closed terminal or pipe), then SIGTERM: it still cleans up (exit 0, nothing left)', async () => {
    const { cli, runnerTemp } = startCli();
    await cli.waitFor(/Press Ctrl-C/);
    cli.closeOutput();
    cli.signal('SIGTERM'); // its "stopping" line now meets a pipe without a reader (EPIPE)
    expect({ exit: await cli.exited, left: await leftovers(runnerTemp) }).toEqual({ exit: 0, left: [] });
  }, 120_000);

  it('CLI: `image-ci remote-build-env 2>&1 | tee log`, Ctrl-C ends tee first: the CLI still cleans up', async () => {
    const runnerTemp = newRunnerTemp();
    const log = join(runnerTemp, '..', `${basename(runnerTemp)}.log`);
    const tee = spawn('tee', [log], { stdio: ['pipe', 'ignore', 'inherit'] });
    const teeExited = new Promise((resolve) => tee.on('exit', resolve));
    try {
      const cli = new CliProcess(ACTION, [], { ...pm.env, RUNNER_TEMP: runnerTemp }, tee.stdin);
      tee.stdin.destroy(); // the CLI holds the only writing end, as in a shell pipeline
      while (!(await readFile(log, 'utf8').catch(() => '')).includes('Press Ctrl-C')) await sleep(20);
      // A terminal's Ctrl-C reaches both; tee goes first here, so the CLI's next line finds no reader.
      tee.kill('SIGINT');
      await teeExited;
      cli.signal('SIGINT');
      expect({ exit: await cli.exited, left: await leftovers(runnerTemp) }).toEqual({ exit: 0, left: [] });
    } finally {
      await rm(log, { force: true });
    }
  }, 120_000);

  it('CLI: a signal storm from startup through cleanup still ends with nothing left', async () => {
    const { cli, runnerTemp } = startCli();
    await cli.waitFor(/Starting podman/);
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGINT', 'SIGHUP', 'SIGTERM'] as const) {
      cli.signal(signal);
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(await cli.exited).toBe(1);
    expect(await leftovers(runnerTemp)).toEqual([]);
  }, 120_000);
});
