/**
 * "Nothing left": after a killed or interrupted step and its post, no process and no file of the action may
 * remain. Every process an action starts carries RUNNER_TEMP (a per-test mkdtemp path) in its environment or its
 * command line, so a scan of /proc for that path finds whatever survived, however it was started.
 */
import { spawn } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { REPO_ROOT } from './harness.js';

/** Live processes (not zombies: those have no cmdline or environ) whose command line or environment holds `text`. */
export async function processesMentioning(text: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8');
      const environ = await readFile(`/proc/${entry}/environ`, 'utf8');
      if (cmdline.includes(text) || environ.includes(text)) {
        found.push(`pid ${entry}: ${cmdline.split('\0').join(' ').trim()}`);
      }
    } catch {
      // exited while we looked
    }
  }
  return found;
}

/** What an action left under RUNNER_TEMP and among the processes: empty when it cleaned up. */
export async function leftovers(runnerTemp: string): Promise<string[]> {
  const files = await readdir(runnerTemp).catch(() => [] as string[]);
  return [...files.map((f) => `file ${join(runnerTemp, f)}`), ...(await processesMentioning(runnerTemp))];
}

/**
 * `image-ci <action>` as a child process a test can signal, with its output as it arrives; or, given `output`
 * (the stdin of a reader such as `tee` or `head`), with stdout and stderr both going there, as `2>&1 | reader`.
 */
export class CliProcess {
  stdout = '';
  stderr = '';
  readonly exited: Promise<number | null>;
  private readonly child;

  constructor(action: string, args: readonly string[], env: Record<string, string>, output?: Writable) {
    this.child = spawn(process.execPath, [join(REPO_ROOT, 'dist/cli.js'), action, ...args], {
      env: { ...process.env, ...env, NODE_OPTIONS: '' },
      stdio: ['ignore', output ?? 'pipe', output ?? 'pipe'],
    });
    this.child.stdout?.on('data', (c: Buffer) => (this.stdout += c.toString()));
    this.child.stderr?.on('data', (c: Buffer) => (this.stderr += c.toString()));
    this.exited = new Promise((resolve) => this.child.on('close', (code) => resolve(code)));
  }

  /** The reader goes away (a closed terminal, a `| head` that has its lines): the CLI's writes fail from now on. */
  closeOutput(): void {
    this.child.stdout?.destroy();
    this.child.stderr?.destroy();
  }

  /** Resolves once stderr matches (checked as output arrives); rejects if the CLI exits first. */
  async waitFor(pattern: RegExp): Promise<void> {
    let exited = false;
    void this.exited.then(() => (exited = true));
    while (!pattern.test(this.stderr)) {
      if (exited) throw new Error(`CLI exited before ${pattern}:\n${this.stdout}\n${this.stderr}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  signal(name: NodeJS.Signals): void {
    this.child.kill(name);
  }
}

/** When a kill-sweep run kills main: `delayMs` after main started, or after its trigger line. */
export interface KillPoint {
  afterLine: boolean;
  delayMs: number;
}

/**
 * 40 kill points over a main whose trigger line came `lineMs` after its start and which ended at `endMs`: 10
 * spread before the line, 20 at 10 ms steps right after it (where main starts the long-running child and records
 * it), 10 spread over the rest.
 */
export function killPoints(lineMs: number, endMs: number): KillPoint[] {
  const spread = (from: number, to: number, n: number) =>
    Array.from({ length: n }, (_, i) => Math.round(from + ((to - from) * (i + 1)) / n));
  return [
    ...spread(0, lineMs, 10).map((delayMs) => ({ afterLine: false, delayMs })),
    ...Array.from({ length: 20 }, (_, i) => ({ afterLine: true, delayMs: i * 10 })),
    ...spread(200, Math.max(200, endMs - lineMs), 10).map((delayMs) => ({ afterLine: true, delayMs })),
  ];
}

/**
 * Harness options that run `action`'s main under kill-main.mjs: killed at `point`, or (no point) run whole with
 * its timings written to `report`.
 */
export function killMainOptions(
  action: string,
  trigger: RegExp,
  point: KillPoint | undefined,
  report?: string,
): { mainScript: string; env: Record<string, string> } {
  const env: Record<string, string> = {
    KILL_MAIN_SCRIPT: join(REPO_ROOT, 'dist', action, 'main.js'),
    KILL_AFTER_LINE: trigger.source,
  };
  if (point) {
    env.KILL_DELAY_MS = String(point.delayMs);
    if (!point.afterLine) delete env.KILL_AFTER_LINE;
  }
  if (report) env.KILL_REPORT = report;
  return { mainScript: join(REPO_ROOT, '__tests__/support/kill-main.mjs'), env };
}
