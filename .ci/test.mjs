// Runs jest with a JSON report in a run of its own, checks the run left nothing behind, and prints the closing
// line CI reads: `tests: N passed, N failed` (a failed leftovers check counts as one failed test).
//
// The run gets a private TMPDIR (<tmp>/ici-t-xxxx/tmp) and a marker variable every process it starts inherits,
// so after jest exits this script can tell exactly what the tests left: files in that TMPDIR, processes still
// running, mounts below the run dir. It names them, fails the run, then removes them.
// Usage: node .ci/test.mjs [jest args...]
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { findLeftovers, MARKER_ENV, removeRun, sweepDeadRuns } from './leftovers.mjs';

const RUN_PREFIX = 'ici-t-';
const outerTmp = tmpdir();
sweepDeadRuns(outerTmp, RUN_PREFIX);
const runDir = mkdtempSync(join(outerTmp, RUN_PREFIX));
const testTmp = join(runDir, 'tmp');
mkdirSync(testTmp);
// Tests run some steps as an ordinary user: the run dir must be passable and its TMPDIR work like /tmp.
chmodSync(runDir, 0o755);
chmodSync(testTmp, 0o1777);
writeFileSync(join(runDir, 'owner'), String(process.pid));
const marker = `${MARKER_ENV}=${basename(runDir)}`;

mkdirSync('.test-results', { recursive: true });
const report = '.test-results/jest.json';
const userArgs = process.argv.slice(2);
// Jest's cache stays where it always is (keyed by uid in the real temp dir), not in the run's TMPDIR.
const cacheArgs = userArgs.some((a) => a.startsWith('--cacheDirectory'))
  ? []
  : [`--cacheDirectory=${join(outerTmp, `jest_${(process.getuid?.() ?? 0).toString(36)}`)}`];
const args = [
  '--experimental-vm-modules',
  'node_modules/jest/bin/jest.js',
  '--json',
  `--outputFile=${report}`,
  ...cacheArgs,
  ...userArgs,
];
const env = {
  ...process.env,
  NODE_NO_WARNINGS: '1',
  TMPDIR: testTmp,
  ICI_RUN_DIR: runDir,
  [MARKER_ENV]: basename(runDir),
};

// A signal goes on to jest (Ctrl-C reaches it anyway); this script waits for it, then still checks and cleans up.
const status = await new Promise((resolve) => {
  const child = spawn(process.execPath, args, { stdio: 'inherit', env });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(signal, () => child.kill(signal));
  child.on('close', (code) => resolve(code ?? 1));
  child.on('error', () => resolve(1));
});

let passed = 0;
let failed = 0;
if (existsSync(report)) {
  const result = JSON.parse(readFileSync(report, 'utf8'));
  passed = result.numPassedTests;
  failed = result.numFailedTests + result.numRuntimeErrorTestSuites;
}

const leftovers = findLeftovers({ runDir, testTmp, marker });
if (leftovers.length) {
  console.log(`\nleftovers check FAILED: the tests left ${leftovers.length} thing(s) behind (now removed):`);
  for (const line of leftovers) console.log(`  ${line}`);
  failed += 1;
}
removeRun({ runDir, marker });

console.log(`tests: ${passed} passed, ${failed} failed`);
process.exit(status === 0 && failed === 0 && passed > 0 ? 0 : 1);
