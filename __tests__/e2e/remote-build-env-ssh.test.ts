/**
 * Mode ssh against a real sshd on 127.0.0.1 (Debian openssh-server, started here in the foreground with its own
 * host key and config) in front of a real podman service; keys generated with ssh-keygen per run.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createConnection, createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { exec } from '../../src/core/exec.js';
import { runAction, secretOnlyAfterMask } from '../support/harness.js';
import { startSplitJob } from '../support/split-job.js';
import { pathExists } from '../../src/core/files.js';
import { createPodmanTestEnv, type PodmanTestEnv, type TestPodmanService } from '../support/podman.js';

let pm: PodmanTestEnv;
let service: TestPodmanService;
let work: string;
let sshd: ChildProcess;
let port: number;
let clientKey: string;
let knownHostsLine: string;

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port: p } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return p;
}

async function waitForPort(p: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = createConnection({ host: '127.0.0.1', port: p }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.on('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`sshd did not listen on ${p}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function keygen(path: string): Promise<string> {
  await exec('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'ici-test', '-f', path], {
    timeoutMs: 10_000,
  });
  return (await readFile(`${path}.pub`, 'utf8')).trim();
}

beforeAll(async () => {
  pm = await createPodmanTestEnv();
  service = await pm.startService({ name: 'remote' });
  work = mkdtempSync('/tmp/ici-ssh-');
  const hostPub = await keygen(join(work, 'host_key'));
  const clientPub = await keygen(join(work, 'client_key'));
  clientKey = await readFile(join(work, 'client_key'), 'utf8');
  await writeFile(join(work, 'authorized_keys'), `${clientPub}\n`, { mode: 0o600 });
  port = await freePort();
  const [type, body] = hostPub.split(' ');
  knownHostsLine = `[127.0.0.1]:${port} ${type} ${body}`;
  const config = join(work, 'sshd_config');
  await writeFile(
    config,
    [
      'ListenAddress 127.0.0.1',
      `Port ${port}`,
      `HostKey ${join(work, 'host_key')}`,
      `PidFile ${join(work, 'sshd.pid')}`,
      `AuthorizedKeysFile ${join(work, 'authorized_keys')}`,
      'StrictModes no',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      'PermitRootLogin prohibit-password',
      'AllowStreamLocalForwarding yes',
      '',
    ].join('\n'),
  );
  await mkdir('/run/sshd', { recursive: true });
  sshd = spawn('/usr/sbin/sshd', ['-D', '-e', '-f', config], { stdio: 'ignore' });
  await waitForPort(port, 10_000);
});

afterAll(async () => {
  sshd?.kill('SIGTERM');
  await pm?.remove();
  if (work) await rm(work, { recursive: true, force: true });
});

function hostUrl(): string {
  return `ssh://root@127.0.0.1:${port}${service.socket}`;
}

async function runSshJob(inputs: Record<string, string>, knownHostsBefore?: string) {
  const home = mkdtempSync('/tmp/ici-home-');
  if (knownHostsBefore !== undefined) {
    await mkdir(join(home, '.ssh'), { mode: 0o700 });
    await writeFile(join(home, '.ssh/known_hosts'), knownHostsBefore, { mode: 0o600 });
  }
  const result = await runAction({
    action: 'remote-build-env',
    inputs: { mode: 'ssh', host: hostUrl(), 'ssh-key': clientKey, ...inputs },
    env: pm.env,
    home,
  });
  return { home, result };
}

describe('remote-build-env, mode ssh (real sshd on 127.0.0.1 in front of a podman service)', () => {
  it('verifies the connection, exports CONTAINER_HOST and CONTAINER_SSHKEY, and removes the key in post', async () => {
    const home = mkdtempSync('/tmp/ici-home-');
    try {
      const job = await startSplitJob({
        action: 'remote-build-env',
        inputs: { mode: 'ssh', host: hostUrl(), 'ssh-key': clientKey, 'known-hosts': knownHostsLine },
        env: pm.env,
        home,
      });
      const main = job.main;
      expect(main.main.exitCode).toBe(0);
      expect(main.exportedEnv.CONTAINER_HOST).toBe(hostUrl());
      const keyFile = main.exportedEnv.CONTAINER_SSHKEY!;
      expect((await stat(keyFile)).mode & 0o777).toBe(0o600);
      const bodyLine = clientKey.split('\n')[1]!;
      expect(main.masks).toContain(bodyLine);
      expect(secretOnlyAfterMask(main.main, bodyLine)).toBe(true);
      expect(await readFile(join(home, '.ssh/known_hosts'), 'utf8')).toContain(knownHostsLine);

      // A later step of the job, using only what main exported.
      const later = await exec('podman', ['--remote', 'info', '--format', '{{.Version.Version}}'], {
        timeoutMs: 60_000,
        env: { ...process.env, ...pm.env, ...main.exportedEnv, HOME: home },
      });
      expect(later.stdout.trim()).toMatch(/^\d+\.\d+/);

      const post = await job.post();
      expect(post.exitCode).toBe(0);
      expect(await pathExists(keyFile)).toBe(false);
      // known_hosts did not exist before; only our line was in it, so it is gone again.
      expect(await pathExists(join(home, '.ssh/known_hosts'))).toBe(false);
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  });

  it('refuses a host that presents another key than known-hosts says, and still removes the key', async () => {
    const other = await keygen(join(work, `other_${Date.now()}`));
    const [type, body] = other.split(' ');
    const { home, result } = await runSshJob({ 'known-hosts': `[127.0.0.1]:${port} ${type} ${body}` });
    try {
      expect(result.main.exitCode).toBe(1);
      expect(result.errors.join('\n')).toMatch(
        /cannot reach the podman service at ssh:\/\/.*(mismatch|knownhosts)/i,
      );
      const keyDir = JSON.parse(result.main.state['remote-build-env']!).keyDir as string;
      expect(await pathExists(keyDir)).toBe(false);
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  });

  it('names known-hosts when its lines do not cover the host, and requires it unless insecure-host-key', async () => {
    const wrongHost = await runSshJob({ 'known-hosts': knownHostsLine.replace(`:${port}`, `:${port + 1}`) });
    const missing = await runSshJob({});
    for (const r of [wrongHost, missing]) await rm(r.home, { recursive: true, force: true });
    expect(wrongHost.result.main.exitCode).toBe(2);
    expect(wrongHost.result.errors[0]).toBe(
      `Input 'known-hosts': has no entry for [127.0.0.1]:${port}; add the host's keys (e.g. the output of \`ssh-keyscan -p ${port} 127.0.0.1\`).`,
    );
    expect(missing.result.main.exitCode).toBe(2);
    expect(missing.result.errors[0]).toMatch(/^Input 'known-hosts': is required with `mode: ssh`/);
  });

  it('insecure-host-key connects without known-hosts, warns, and post takes out what podman trusted on first use', async () => {
    const unrelated =
      'example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBd8ZyWkq6B0D6JHe1ESsUefQpC7wkxEJ7rsmAYyBR4K\n';
    const { home, result } = await runSshJob({ 'insecure-host-key': 'true' }, unrelated);
    try {
      expect(result.main.exitCode).toBe(0);
      expect(result.warnings.join('\n')).toMatch(/host key of \[127\.0\.0\.1\]:\d+ is not checked/);
      const added = JSON.parse(result.main.state['remote-build-env']!).addedKnownHosts as string[];
      expect(added).toEqual([expect.stringContaining(`[127.0.0.1]:${port}`)]);
      expect(await readFile(join(home, '.ssh/known_hosts'), 'utf8')).toBe(unrelated);
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  });
});
