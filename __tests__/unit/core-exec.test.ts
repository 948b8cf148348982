import { describe, expect, it } from '@jest/globals';
import { exec, ExecError, which } from '../../src/core/exec.js';

describe('exec', () => {
  it('captures stdout, stderr and the exit code', async () => {
    const r = await exec('sh', ['-c', 'echo out; echo err >&2'], { timeoutMs: 10_000 });
    expect(r).toMatchObject({ exitCode: 0, stdout: 'out\n', stderr: 'err\n' });
  });

  it('passes secrets on stdin, not argv', async () => {
    const r = await exec('cat', [], { timeoutMs: 10_000, input: 'secret-on-stdin' });
    expect(r.stdout).toBe('secret-on-stdin');
  });

  it('throws with the tail of stderr on failure, or returns it with allowFailure', async () => {
    await expect(exec('sh', ['-c', 'echo boom >&2; exit 3'], { timeoutMs: 10_000 })).rejects.toThrow(
      /sh -c .* exited with 3: boom/,
    );
    const r = await exec('sh', ['-c', 'exit 4'], { timeoutMs: 10_000, allowFailure: true });
    expect(r.exitCode).toBe(4);
  });

  it('kills a process that runs past its timeout', async () => {
    const error = await exec('sleep', ['30'], { timeoutMs: 300 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ExecError);
    expect((error as ExecError).message).toMatch(/timed out after 300 ms/);
    expect((error as ExecError).result?.exitCode).toBe(128);
  });

  it('reports a missing command clearly', async () => {
    await expect(exec('no-such-command-ici', [], { timeoutMs: 1000 })).rejects.toThrow(
      /could not run no-such-command-ici/,
    );
  });

  it('streams lines as they arrive and honours env and cwd', async () => {
    const lines: string[] = [];
    await exec('sh', ['-c', 'echo "$X"; pwd'], {
      timeoutMs: 10_000,
      env: { ...process.env, X: 'from-env' },
      cwd: '/',
      onLine: (l) => lines.push(l),
    });
    expect(lines).toEqual(['from-env', '/']);
  });

  it('which finds commands on PATH', async () => {
    expect(await which('sh')).toMatch(/\/sh$/);
    expect(await which('no-such-command-ici')).toBeUndefined();
  });
});
