/**
 * Signals and the children core/exec starts, in a process of their own (jest's sandbox does not own the real
 * process's signal handling). Children run in process groups of their own; a signal that ends the process is
 * passed on to them, but one that another listener handles (the CLI's trap, which keeps the process up until
 * post has cleaned up) must leave them alone.
 */
import { describe, expect, it } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from '../support/harness.js';

const EXEC = join(REPO_ROOT, 'lib/core/exec.js');

function runScript(body: string): { status: number | null; signal: NodeJS.Signals | null; stdout: string } {
  if (!existsSync(EXEC)) throw new Error('lib/ is missing: run `npm run build` before the e2e tests');
  const script = `import { exec } from ${JSON.stringify(EXEC)};\n${body}`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, NODE_OPTIONS: '' },
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout };
}

describe('core/exec and signals', () => {
  it('a second Ctrl-C the CLI trap handles does not end a cleanup command, and reaches the trap once', () => {
    const r = runScript(`
      const heard = [];
      process.on('SIGINT', (name) => heard.push(name));
      setTimeout(() => process.kill(process.pid, 'SIGINT'), 300);
      const result = await exec('sh', ['-c', 'sleep 1; echo cleaned'], { timeoutMs: 20_000, allowFailure: true });
      console.log(JSON.stringify({ exitCode: result.exitCode, stdout: result.stdout, heard }));
    `);
    expect(r.signal).toBeNull();
    expect(JSON.parse(r.stdout)).toEqual({ exitCode: 0, stdout: 'cleaned\n', heard: ['SIGINT'] });
  });

  it('a signal nothing else handles still ends the process by that signal (its children first: push-multi-tag-signals)', () => {
    const r = runScript(`
      setTimeout(() => process.kill(process.pid, 'SIGTERM'), 300);
      await exec('sh', ['-c', 'sleep 20; echo never'], { timeoutMs: 20_000 });
      console.log('not ended');
    `);
    expect({ signal: r.signal, stdout: r.stdout }).toEqual({ signal: 'SIGTERM', stdout: '' });
  });
});
