/** The registry of tracked children (tracked.ts), with real processes (`sleep`, `touch`) and a real filesystem. */
import { afterEach, describe, expect, it } from '@jest/globals';
import { mkdtempSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { chmod, copyFile, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathExists } from '../../src/core/files.js';
import { sleep } from '../../src/core/process.js';
import { isRunning, stopProcessGroup } from '../../src/actions/remote-build-env/process-group.js';
import { closeRegistry, spawnTracked } from '../../src/actions/remote-build-env/tracked.js';
import { pauseProcess } from '../../src/actions/remote-build-env/local-service.js';

const dirs: string[] = [];

async function registryDir(): Promise<{ dir: string; registry: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'ici-tracked-'));
  dirs.push(dir);
  const registry = join(dir, 'registry');
  await mkdir(registry);
  return { dir, registry };
}

async function entryWritten(path: string): Promise<void> {
  while (!(await readFile(path, 'utf8').catch(() => '')).endsWith('\n')) await sleep(5);
}

afterEach(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

describe('tracked children', () => {
  it('registers a child under its name with the pid and start time main sees, without INPUT_* in its env', async () => {
    const { dir, registry } = await registryDir();
    const child = await spawnTracked(registry, 'sleeper', 'sleep', ['60'], {
      env: { PATH: process.env.PATH, INPUT_SSH_KEY: 'secret' },
      logFile: join(dir, 'log'),
    });
    let outcome;
    try {
      // The wrapper is a process of its own: 'spawn' can come before it wrote its entry, and a registry closed
      // before that stops the command (as it must, the next test). Main's caller waits for the service to answer.
      await entryWritten(join(registry, 'sleeper'));
      const found = await closeRegistry(registry);
      expect(found).toEqual(new Map([['sleeper', child.identity]]));
      expect(child.identity.startTime).toMatch(/^\d+$/);
      expect(await isRunning(child.identity)).toBe(true);
      // It lives for the whole job: the action's inputs (the ssh key) must not sit in its environment.
      const environ = await readFile(`/proc/${child.identity.pid}/environ`, 'utf8');
      expect(environ.split('\0')).toContain(`PATH=${process.env.PATH}`);
      expect(environ).not.toContain('INPUT_SSH_KEY');
      // A later post run reads the closed registry again.
      expect(await closeRegistry(registry)).toEqual(found);
    } finally {
      // Asserted after: a failed expect above must not be masked by this one.
      outcome = await stopProcessGroup(child.identity, 5000);
    }
    expect(outcome).toBe('terminated');
    expect(await child.exited).toBe(128);
  });

  it('a wrapper that starts after post closed the registry never runs its command', async () => {
    const { dir, registry } = await registryDir();
    expect(await closeRegistry(registry)).toEqual(new Map());
    const marker = join(dir, 'ran');
    const child = await spawnTracked(registry, 'late', 'touch', [marker], {
      env: process.env,
      logFile: join(dir, 'log'),
    });
    expect(await child.exited).toBe(125);
    expect(await pathExists(marker)).toBe(false);
    expect(await pathExists(join(registry, 'late'))).toBe(false);
  });

  it('waits for an entry whose wrapper created the file but has not written it yet', async () => {
    const { registry } = await registryDir();
    await writeFile(join(registry, 'slow'), '');
    const closing = closeRegistry(registry);
    // The wrapper still holds its open file: it writes into the renamed registry.
    setTimeout(() => void writeFile(join(`${registry}.closed`, 'slow'), '4242 77\n'), 200);
    expect(await closing).toEqual(new Map([['slow', { pid: 4242, startTime: '77' }]]));
  });

  it('finds nothing when main died before making the registry', async () => {
    const { registry } = await registryDir();
    await rename(registry, `${registry}-elsewhere`);
    expect(await closeRegistry(registry)).toEqual(new Map());
  });
});

describe("rootless podman's pause process, from its pid file", () => {
  it('is found only while the pid names a pause process of this user: a reused pid names a stranger post must not stop', async () => {
    const { dir } = await registryDir();
    const runtimeDir = join(dir, 'runtime');
    await mkdir(join(runtimeDir, 'libpod/tmp'), { recursive: true });
    // A copy of sleep is named as podman's pause process is (/proc/<pid>/comm comes from the file name).
    const catatonit = join(dir, 'catatonit');
    await copyFile('/bin/sleep', catatonit);
    await chmod(catatonit, 0o755);
    const children = [spawn(catatonit, ['60']), spawn('sleep', ['60'])];
    try {
      const [pause, stranger] = children.map((c) => c.pid!);
      await writeFile(join(runtimeDir, 'libpod/tmp/pause.pid'), `${pause}\n`);
      expect((await pauseProcess(runtimeDir))?.pid).toBe(pause);
      expect(await pauseProcess(runtimeDir, 4242)).toBeUndefined(); // another user's
      await writeFile(join(runtimeDir, 'libpod/tmp/pause.pid'), `${stranger}\n`);
      expect(await pauseProcess(runtimeDir)).toBeUndefined();
    } finally {
      for (const c of children) c.kill('SIGKILL');
    }
  });
});
