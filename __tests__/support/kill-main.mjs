// Stands in for an action's main.js under the runner harness (as `mainScript`) and SIGKILLs the real one at a
// chosen moment, so a kill sweep can aim at a phase of main rather than at wall-clock time, which moves with the
// machine's load. Environment:
//   KILL_MAIN_SCRIPT  the real main.js (started with this process's environment)
//   KILL_AFTER_LINE   a regex: the delay counts from the first output line matching it (else from the start)
//   KILL_DELAY_MS     when to kill; unset: never (a calibration run)
//   KILL_REPORT       a file that receives {"lineMs": …, "endMs": …} (ms from the start) when main ends
// stdout is passed through (the harness reads workflow commands there); the exit code is main's, or 137.
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';

const env = process.env;
const started = Date.now();
const delay = env.KILL_DELAY_MS === undefined ? undefined : Number(env.KILL_DELAY_MS);
const trigger = env.KILL_AFTER_LINE ? new RegExp(env.KILL_AFTER_LINE) : undefined;
let lineMs;

const child = spawn(process.execPath, [env.KILL_MAIN_SCRIPT], { stdio: ['ignore', 'pipe', 'inherit'] });
let timer;
const arm = () => {
  if (delay !== undefined) timer = setTimeout(() => child.kill('SIGKILL'), delay);
};
if (!trigger) arm();

let pending = '';
child.stdout.on('data', (chunk) => {
  process.stdout.write(chunk);
  if (!trigger || lineMs !== undefined) return;
  pending += chunk.toString('utf8');
  const lines = pending.split('\n');
  pending = lines.pop() ?? '';
  if (lines.some((l) => trigger.test(l))) {
    lineMs = Date.now() - started;
    arm();
  }
});
child.on('close', (code, signal) => {
  clearTimeout(timer);
  if (env.KILL_REPORT)
    writeFileSync(env.KILL_REPORT, JSON.stringify({ lineMs, endMs: Date.now() - started }));
  process.exitCode = signal ? 137 : (code ?? 1);
});
