import { beforeAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { childEnv, exec, ExecError, OUTPUT_LIMIT_BYTES } from '../../src/core/exec.js';
import { CliHost } from '../../src/core/host.js';
import { MapInputSource } from '../../src/core/inputs.js';
import { running } from '../support/process-state.js';

describe('exec', () => {
  // The grace period before SIGKILL is a fixed 5 s: this call starts with the file and runs beside the other
  // tests; the last test of this block awaits it.
  let graceful: Promise<unknown>;
  beforeAll(() => {
    graceful = exec('sh', ['-c', `trap '' TERM; sh -c 'trap "" TERM; sleep 100000' & wait; wait`], {
      timeoutMs: 300,
    }).catch((e: unknown) => e);
  });

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

  it('a timeout ends what the child started as well (its process group), and the call returns', async () => {
    // A credential helper as they are written: a shell waiting on a child of its own. SIGTERM to the shell alone
    // left the child holding the pipes, and the call waited for them to close (100000 s).
    const dir = mkdtempSync(join(tmpdir(), 'ici-exec-'));
    const pidFile = join(dir, 'pid');
    try {
      const error = await exec('sh', ['-c', `sleep 100000 & echo $! > ${pidFile}; wait`], {
        timeoutMs: 500,
      }).catch((e: unknown) => e);
      expect((error as ExecError).message).toMatch(/sh -c timed out after 500 ms/);
      const grandchild = Number(readFileSync(pidFile, 'utf8'));
      // Signalled with the shell; it ends when the kernel next runs it. Left alone (the old code), it never does.
      while (running(grandchild)) await new Promise((resolve) => setTimeout(resolve, 50));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it('a background process the child leaves running does not hold the call once the child exited', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ici-exec-'));
    const pidFile = join(dir, 'pid');
    try {
      const r = await exec('sh', ['-c', `sleep 100000 & echo $! > ${pidFile}; echo done`], {
        timeoutMs: 60_000,
      });
      expect(r).toMatchObject({ exitCode: 0, stdout: 'done\n' });
      // Not ours to end: a tool may start a service that must outlive it.
      const background = Number(readFileSync(pidFile, 'utf8'));
      expect(running(background)).toBe(true);
      process.kill(background, 'SIGKILL');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it('stops a child that prints without end, keeping the head and tail of its output', async () => {
    // 700 MB on stdout: all of it buffered, then one string of it, crashed the process outside any error boundary.
    const seen: string[] = [];
    const error = await exec('sh', ['-c', "echo first; head -c 700000000 /dev/zero | tr '\\0' A"], {
      timeoutMs: 60_000,
      allowFailure: true,
      onLine: (line) => seen.push(line),
    }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ExecError);
    const { message, result } = error as ExecError;
    expect(message).toBe(
      `sh -c printed more than ${OUTPUT_LIMIT_BYTES / 1024 / 1024} MiB of output and was stopped`,
    );
    expect(result!.stdout.startsWith('first\nAAAA')).toBe(true);
    expect(result!.stdout).toMatch(/\[… \d+ bytes of output left out …\]/);
    expect(result!.stdout.length).toBeLessThan(3 * 1024 * 1024);
    // The endless "line" reached onLine in bounded pieces.
    expect(seen[0]).toBe('first');
    expect(Math.max(...seen.map((l) => l.length))).toBeLessThanOrEqual(64 * 1024);
  }, 60_000);

  it('reports a missing command clearly', async () => {
    await expect(exec('no-such-command-ici', [], { timeoutMs: 1000 })).rejects.toThrow(
      /could not run no-such-command-ici/,
    );
  });

  it('a start that spawn refuses at once (E2BIG here; ENOMEM from fork takes the same path) is an ExecError with its code', async () => {
    // Node throws these from spawn() itself rather than emitting 'error' as it does for ENOENT, EMFILE and EAGAIN:
    // without the code, a probe could not tell a machine short of memory from an answer worth keeping.
    const error = await exec('true', ['x'.repeat(200_000)], { timeoutMs: 1000, allowFailure: true }).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ExecError);
    expect((error as ExecError).spawnCode).toBe('E2BIG');
    expect((error as ExecError).message).toMatch(/^could not run true: /);
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

  it('a child that ignores SIGTERM and hides its pipes in a grandchild is killed after the grace period', async () => {
    const error = await graceful;
    expect((error as ExecError).message).toMatch(/timed out after 300 ms/);
  }, 30_000);
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
