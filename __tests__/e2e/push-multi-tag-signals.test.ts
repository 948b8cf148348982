/**
 * push-multi-tag ended by a signal while a tool it started is running (the runner cancelling a job, Ctrl-C on
 * the CLI). Tools run in process groups of their own, so a timeout can end what they started; the signal that
 * ends main must then reach them too, or a credential helper stuck on a keyring outlives the job.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../support/harness.js';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { running } from '../support/process-state.js';

describe('push-multi-tag ended by a signal', () => {
  let work: string;
  let layout: GeneratedLayout;

  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'ici-push-signal-'));
    layout = generateLayout(join(work, 'layout'), { layers: [1000] });
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it.each(['SIGTERM', 'SIGINT'] as const)(
    '%s to main ends the credential helper it is waiting for, and what the helper started',
    async (signal) => {
      const dir = mkdtempSync(join(work, 'run-'));
      const bin = join(dir, 'bin');
      const home = join(dir, 'home');
      mkdirSync(bin);
      mkdirSync(join(home, '.docker'), { recursive: true });
      const pids = join(dir, 'pids');
      // A helper as they are written: a shell waiting on a child of its own (a keyring daemon that hangs).
      writeFileSync(
        join(bin, 'docker-credential-hang'),
        `#!/bin/sh\nsleep 100000 &\necho "$$ $!" > ${pids}.tmp\nmv ${pids}.tmp ${pids}\nwait\n`,
      );
      chmodSync(join(bin, 'docker-credential-hang'), 0o755);
      writeFileSync(
        join(home, '.docker', 'config.json'),
        JSON.stringify({ credHelpers: { 'registry.invalid': 'hang' } }),
      );
      const runnerTemp = join(dir, 'rt');
      mkdirSync(runnerTemp);
      const files = Object.fromEntries(
        ['GITHUB_OUTPUT', 'GITHUB_STATE', 'GITHUB_ENV', 'GITHUB_PATH', 'GITHUB_STEP_SUMMARY'].map((name) => {
          writeFileSync(join(dir, name), '');
          return [name, join(dir, name)];
        }),
      );
      const main = spawn(process.execPath, [join(REPO_ROOT, 'dist', 'push-multi-tag', 'main.js')], {
        cwd: dir,
        stdio: 'ignore',
        env: {
          PATH: `${bin}:${process.env.PATH}`,
          HOME: home,
          TMPDIR: process.env.TMPDIR,
          GITHUB_ACTIONS: 'true',
          RUNNER_TEMP: runnerTemp,
          GITHUB_WORKSPACE: dir,
          ...files,
          INPUT_SOURCE: layout.transportRef,
          INPUT_REPOSITORIES: 'registry.invalid/team/app',
          INPUT_TAGS: 'v1',
        },
      });
      const exited = new Promise<NodeJS.Signals | null>((resolve) =>
        main.on('close', (_code, s) => resolve(s)),
      );
      try {
        // Waits for the helper to be running (a state, not a time): it writes its pids once it started.
        while (!existsSync(pids)) await new Promise((resolve) => setTimeout(resolve, 50));
        const [helper, grandchild] = readFileSync(pids, 'utf8').trim().split(' ').map(Number) as [
          number,
          number,
        ];
        expect(running(helper)).toBe(true);
        main.kill(signal);
        expect(await exited).toBe(signal);
        // Main passes the signal on and ends at once; the helper's shell and its sleep end when the kernel next
        // runs them (later, on a busy machine). Without the passing on they never do: the test times out.
        while (running(helper) || running(grandchild))
          await new Promise((resolve) => setTimeout(resolve, 50));
      } finally {
        main.kill('SIGKILL');
        if (existsSync(pids)) {
          for (const pid of readFileSync(pids, 'utf8').trim().split(' ').map(Number)) {
            if (running(pid)) process.kill(pid, 'SIGKILL');
          }
        }
      }
    },
    60_000,
  );
});
