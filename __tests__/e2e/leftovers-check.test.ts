/**
 * The suite's leftovers check (.ci/leftovers.mjs, run by .ci/test.mjs after jest): a run that left a file in its
 * TMPDIR, a process (one carrying the run's marker, one only working inside the run dir) and a mount is named
 * thing by thing, and removeRun takes all of it away. A clean run reports nothing.
 */
import { describe, expect, it } from '@jest/globals';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { findLeftovers, MARKER_ENV, removeRun } from '../../.ci/leftovers.mjs';
import { isRunning, identify } from '../../src/actions/remote-build-env/process-group.js';
import { REPO_ROOT } from '../support/harness.js';

/** Test sources below `dir` (.ts, .mjs), recursively. */
function listSources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? listSources(join(dir, e.name)) : /\.(ts|mjs)$/.test(e.name) ? [join(dir, e.name)] : [],
  );
}

function fakeRun() {
  const runDir = mkdtempSync(join(tmpdir(), 'ici-fake-run-'));
  const testTmp = join(runDir, 'tmp');
  mkdirSync(testTmp);
  const marker = `${MARKER_ENV}=fake-${process.pid}`;
  return { runDir, testTmp, marker };
}

describe('leftovers check', () => {
  it('names a file left in TMPDIR, a marked process, a process working in the run dir and a mount; removes them', async () => {
    const run = fakeRun();
    try {
      mkdirSync(join(run.testTmp, 'ici-run-left'));
      const [name, value] = run.marker.split('=') as [string, string];
      const marked = spawn('sleep', ['600'], { env: { ...process.env, [name]: value }, stdio: 'ignore' });
      const inside = spawn('sleep', ['601'], { cwd: run.testTmp, env: {}, stdio: 'ignore' });
      const mount = join(run.runDir, 'mnt');
      mkdirSync(mount);
      execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', mount]);
      const processes = [await identify(marked.pid!), await identify(inside.pid!)];

      const found = findLeftovers(run);
      expect(found.sort()).toEqual(
        [
          `left in TMPDIR (${run.testTmp}): ici-run-left/`,
          `mount still in place: ${mount}`,
          `process ${marked.pid} still running: sleep 600`,
          `process ${inside.pid} still running: sleep 601`,
        ].sort(),
      );

      removeRun(run);
      for (const p of processes) {
        await new Promise((resolve) => (p.pid === marked.pid ? marked : inside).once('exit', resolve));
        expect(await isRunning(p)).toBe(false);
      }
      expect(existsSync(run.runDir)).toBe(false);
    } finally {
      removeRun(run);
    }
  });

  it("sees every temp dir the tests make: they make them under TMPDIR (the run's), never straight in /tmp", () => {
    // A dir in /tmp itself is outside the run, so one a test leaks would pass the check unseen.
    const straightInTmp = /mkdtemp(?:Sync)?\(\s*['"`]\/tmp\//;
    const offenders = listSources(join(REPO_ROOT, '__tests__')).filter((file) =>
      straightInTmp.test(readFileSync(file, 'utf8')),
    );
    expect(offenders.map((f) => relative(REPO_ROOT, f))).toEqual([]);
  });

  it('reports nothing for a clean run', () => {
    const run = fakeRun();
    try {
      writeFileSync(join(run.runDir, 'owner'), String(process.pid));
      expect(findLeftovers(run)).toEqual([]);
    } finally {
      removeRun(run);
    }
  });
});
