import { describe, expect, it } from '@jest/globals';
import { childEnv, exec, ExecError } from '../../src/core/exec.js';
import { CliHost } from '../../src/core/host.js';
import { MapInputSource } from '../../src/core/inputs.js';

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
});

describe('child environments', () => {
  it('a child sees no INPUT_*, no credential variable and no variable holding a registered secret', async () => {
    const secret = `pw-${process.pid}-child-env-secret`;
    const host = new CliHost({ inputs: new MapInputSource({}), log: () => undefined });
    host.setSecret(secret);
    const r = await exec('env', [], {
      timeoutMs: 10_000,
      env: {
        ...process.env,
        INPUT_PASSWORD: secret,
        'INPUT_SSH-KEY': 'key material',
        IMAGE_CI_PASSWORD: 'from-the-cli-env',
        ACTIONS_RUNTIME_TOKEN: 'runner-token',
        REGISTRY_AUTH: `user:${secret}`,
        KEEP_ME: 'plain',
      },
    });
    const names = r.stdout.split('\n').map((l) => l.split('=')[0]);
    expect(names).toContain('KEEP_ME');
    expect(names).toContain('PATH');
    for (const gone of [
      'INPUT_PASSWORD',
      'INPUT_SSH-KEY',
      'IMAGE_CI_PASSWORD',
      'ACTIONS_RUNTIME_TOKEN',
      'REGISTRY_AUTH',
    ]) {
      expect(names).not.toContain(gone);
    }
    expect(r.stdout).not.toContain(secret);
  });

  it('a short secret removes only a variable that is exactly it, never one that merely contains it', () => {
    const host = new CliHost({ inputs: new MapInputSource({}), log: () => undefined });
    host.setSecret('bin');
    const env = childEnv({ PATH: '/usr/bin:/bin', SHORT: 'bin' });
    expect(env).toEqual({ PATH: '/usr/bin:/bin' });
  });
});
