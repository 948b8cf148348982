// Runs jest with a JSON report and prints the closing line CI reads: `tests: N passed, N failed`.
// Usage: node .ci/test.mjs [jest args...]
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, existsSync } from 'node:fs';

mkdirSync('.test-results', { recursive: true });
const report = '.test-results/jest.json';
const args = [
  '--experimental-vm-modules',
  'node_modules/jest/bin/jest.js',
  '--json',
  `--outputFile=${report}`,
  ...process.argv.slice(2),
];
const env = { ...process.env, NODE_NO_WARNINGS: '1' };
const run = spawnSync(process.execPath, args, { stdio: 'inherit', env });
let passed = 0;
let failed = 0;
if (existsSync(report)) {
  const result = JSON.parse(readFileSync(report, 'utf8'));
  passed = result.numPassedTests;
  failed = result.numFailedTests + result.numRuntimeErrorTestSuites;
}
console.log(`tests: ${passed} passed, ${failed} failed`);
process.exit(run.status === 0 && failed === 0 && passed > 0 ? 0 : 1);
