/**
 * Mode ssh against a real sshd (Debian openssh-server, started here in the foreground with its own host key and
 * config) in front of a real podman service; keys generated with ssh-keygen per run. The sshd listens on
 * 127.0.0.1 and ::1 on a free port, and on port 22 of a random 127.x.y.z address, so that a URL without a port
 * reaches it for real.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { lstat, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createConnection, createServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { exec } from '../../src/core/exec.js';
import { mapLimit } from '../../src/core/pool.js';
import { runAction, secretOnlyAfterMask } from '../support/harness.js';
import { startSplitJob, type SplitJob } from '../support/split-job.js';
import { pathExists } from '../../src/core/files.js';
import { CliProcess, killMainOptions, killPoints, leftovers, type KillPoint } from '../support/leftovers.js';
import { createPodmanTestEnv, type PodmanTestEnv, type TestPodmanService } from '../support/podman.js';

/** The line main prints right before it starts ssh. */
const CONNECTING = /^Connecting to ssh:/;

let pm: PodmanTestEnv;
let service: TestPodmanService;
let work: string;
let sshd: ChildProcess;
let port: number;
/** A loopback address whose port 22 this sshd listens on. */
let address22: string;
let clientKey: string;
let hostKeyType: string;
let hostKeyBody: string;
let knownHostsLine: string;
const runnerTemps: string[] = [];

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port: p } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return p;
}

/** A random 127.x.y.z whose port 22 is free (nothing here listens on port 22 of every address). */
async function loopbackWithFreePort22(): Promise<string> {
  for (;;) {
    const byte = () => 1 + Math.floor(Math.random() * 254);
    const address = `127.${byte()}.${byte()}.${byte()}`;
    const server = createServer();
    const free = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false));
      server.listen(22, address, () => resolve(true));
    });
    if (!free) continue;
    await new Promise((resolve) => server.close(resolve));
    return address;
  }
}

async function waitForPort(host: string, p: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = createConnection({ host, port: p }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.on('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`sshd did not listen on ${host} port ${p}`);
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
  work = mkdtempSync(join(tmpdir(), 'ici-ssh-'));
  const hostPub = await keygen(join(work, 'host_key'));
  const clientPub = await keygen(join(work, 'client_key'));
  clientKey = await readFile(join(work, 'client_key'), 'utf8');
  await writeFile(join(work, 'authorized_keys'), `${clientPub}\n`, { mode: 0o600 });
  port = await freePort();
  address22 = await loopbackWithFreePort22();
  [hostKeyType, hostKeyBody] = hostPub.split(' ') as [string, string];
  knownHostsLine = knownHostsEntry(`[127.0.0.1]:${port}`);
  const config = join(work, 'sshd_config');
  await writeFile(
    config,
    [
      `ListenAddress 127.0.0.1:${port}`,
      `ListenAddress [::1]:${port}`,
      `ListenAddress ${address22}:22`,
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
  await waitForPort('127.0.0.1', port, 10_000);
  await waitForPort('::1', port, 10_000);
  await waitForPort(address22, 22, 10_000);
});

afterAll(async () => {
  sshd?.kill('SIGTERM');
  await pm?.remove();
  if (work) await rm(work, { recursive: true, force: true });
  for (const dir of runnerTemps) await rm(dir, { recursive: true, force: true });
});

function knownHostsEntry(name: string): string {
  return `${name} ${hostKeyType} ${hostKeyBody}`;
}

function hostUrl(): string {
  return `ssh://root@127.0.0.1:${port}${service.socket}`;
}

/** The CLI's flags for a tunnel to the test sshd. */
function sshCliArgs(): string[] {
  return ['--mode', 'ssh', '--host', hostUrl(), '--ssh-key', clientKey, '--known-hosts', knownHostsLine];
}

/** Short (socket paths), under the run's TMPDIR (the leftovers check lists it), and removed after the tests. */
function newRunnerTemp(): string {
  const dir = mkdtempSync(join(tmpdir(), 'ici-rs-'));
  runnerTemps.push(dir);
  return dir;
}

/** A HOME for one job, with this known_hosts in it when given. */
async function newHome(knownHostsBefore?: string): Promise<string> {
  const home = mkdtempSync(join(tmpdir(), 'ici-home-'));
  runnerTemps.push(home);
  if (knownHostsBefore !== undefined) {
    await mkdir(join(home, '.ssh'), { mode: 0o700 });
    await writeFile(join(home, '.ssh/known_hosts'), knownHostsBefore, { mode: 0o600 });
  }
  return home;
}

async function runSshJob(inputs: Record<string, string>, knownHostsBefore?: string) {
  const home = await newHome(knownHostsBefore);
  const result = await runAction({
    action: 'remote-build-env',
    inputs: { mode: 'ssh', host: hostUrl(), 'ssh-key': clientKey, ...inputs },
    env: pm.env,
    home,
  });
  return { home, result };
}

/** What a later step of the job sees through the exported CONTAINER_HOST. */
async function remoteVersion(exported: Record<string, string>, home: string): Promise<string> {
  const r = await exec('podman', ['--remote', 'info', '--format', '{{.Version.Version}}'], {
    timeoutMs: 60_000,
    env: { ...process.env, ...pm.env, ...exported, HOME: home },
  });
  return r.stdout.trim();
}

describe('remote-build-env, mode ssh (real sshd on 127.0.0.1 in front of a podman service)', () => {
  /** Main against a remote path where nothing listens waits out its startup-timeout: it starts beside the tests. */
  let noService: { runnerTemp: string; job: Promise<SplitJob> };
  beforeAll(async () => {
    const runnerTemp = newRunnerTemp();
    const home = await newHome();
    const job = startSplitJob({
      action: 'remote-build-env',
      inputs: {
        mode: 'ssh',
        host: `ssh://root@127.0.0.1:${port}${work}/nothing-here.sock`,
        'ssh-key': clientKey,
        'known-hosts': knownHostsLine,
        'startup-timeout': '3s',
      },
      env: pm.env,
      home,
      runnerTemp,
    });
    job.catch(() => undefined);
    noService = { runnerTemp, job };
  });
  afterAll(async () => {
    await noService?.job.catch(() => undefined);
  });

  it('post run a second time after another job’s tunnel took the freed socket path: that tunnel’s socket stays', async () => {
    const socket = join(newRunnerTemp(), 'tunnel.sock');
    const start = async () =>
      startSplitJob({
        action: 'remote-build-env',
        inputs: { mode: 'ssh', host: hostUrl(), 'ssh-key': clientKey, 'known-hosts': knownHostsLine, socket },
        env: pm.env,
        home: await newHome(),
        runnerTemp: newRunnerTemp(),
      });
    const a = await start();
    expect(a.main.errors).toEqual([]);
    expect((await a.post()).exitCode).toBe(0);
    const b = await start();
    expect(b.main.errors).toEqual([]);
    try {
      expect((await a.post()).exitCode).toBe(0);
      // Before (e127448): A's second post removed B's tunnel socket.
      expect((await lstat(socket).catch(() => undefined))?.isSocket()).toBe(true);
    } finally {
      expect((await b.post()).exitCode).toBe(0);
    }
    expect(await pathExists(socket)).toBe(false);
  });

  it('opens a tunnel, exports CONTAINER_HOST to its socket, keeps no key on disk, and closes it in post', async () => {
    const home = await newHome();
    const runnerTemp = newRunnerTemp();
    const job = await startSplitJob({
      action: 'remote-build-env',
      inputs: { mode: 'ssh', host: hostUrl(), 'ssh-key': clientKey, 'known-hosts': knownHostsLine },
      env: pm.env,
      home,
      runnerTemp,
    });
    const main = job.main;
    expect(main.main.exitCode).toBe(0);
    const socket = main.outputs.socket!;
    expect(main.exportedEnv.CONTAINER_HOST).toBe(`unix://${socket}`);
    expect(main.outputs['container-host']).toBe(`unix://${socket}`);
    expect(main.exportedEnv.CONTAINER_SSHKEY).toBeUndefined();
    expect((await stat(socket)).mode & 0o777).toBe(0o600);
    const bodyLine = clientKey.split('\n')[1]!;
    expect(main.masks).toContain(bodyLine);
    expect(secretOnlyAfterMask(main.main, bodyLine)).toBe(true);
    // The tunnel has authenticated: the key file is gone already, and the user's ~/.ssh was never touched.
    expect(await readdir(dirname(socket))).not.toContain('id');
    expect(await pathExists(join(home, '.ssh'))).toBe(false);

    // A later step of the job, using only what main exported.
    expect(await remoteVersion(main.exportedEnv, home)).toMatch(/^\d+\.\d+/);

    const post = await job.post();
    expect(post.exitCode).toBe(0);
    expect(post.lines.map((l) => l.text)).toContainEqual(
      expect.stringMatching(/^ssh tunnel \(pid \d+\) stopped\.$/),
    );
    expect(await leftovers(runnerTemp)).toEqual([]);
    expect(await pathExists(join(home, '.ssh'))).toBe(false);
  });

  it('takes the URL without a port (port 22) and an IPv6 host in brackets, for real', async () => {
    const forms = [
      { host: `ssh://root@${address22}${service.socket}`, known: knownHostsEntry(address22) },
      { host: `ssh://root@[::1]:${port}${service.socket}`, known: knownHostsEntry(`[::1]:${port}`) },
    ];
    for (const form of forms) {
      const home = await newHome();
      const runnerTemp = newRunnerTemp();
      const job = await startSplitJob({
        action: 'remote-build-env',
        inputs: { mode: 'ssh', host: form.host, 'ssh-key': clientKey, 'known-hosts': form.known },
        env: pm.env,
        home,
        runnerTemp,
      });
      expect({ host: form.host, exit: job.main.main.exitCode, errors: job.main.errors }).toEqual({
        host: form.host,
        exit: 0,
        errors: [],
      });
      expect(await remoteVersion(job.main.exportedEnv, home)).toMatch(/^\d+\.\d+/);
      expect((await job.post()).exitCode).toBe(0);
      expect(await leftovers(runnerTemp)).toEqual([]);
    }
  });

  it('a stale line for the host in ~/.ssh/known_hosts changes nothing, and the file stays byte-identical', async () => {
    const stale = await keygen(join(work, `stale_${Date.now()}`));
    const [type, body] = stale.split(' ');
    const before = `# the user's own file\n[127.0.0.1]:${port} ${type} ${body}\n${knownHostsEntry(address22).replace(hostKeyBody, body!)}\n`;
    const trust: Record<string, string>[] = [
      { 'known-hosts': knownHostsLine },
      { 'insecure-host-key': 'true' },
    ];
    for (const inputs of trust) {
      const { home, result } = await runSshJob(inputs, before);
      expect({ inputs, exit: result.main.exitCode, errors: result.errors }).toEqual({
        inputs,
        exit: 0,
        errors: [],
      });
      expect(result.post?.exitCode).toBe(0);
      expect(await readFile(join(home, '.ssh/known_hosts'), 'utf8')).toBe(before);
    }
  });

  it('refuses a host that presents another key than known-hosts says, and still removes the key', async () => {
    const other = await keygen(join(work, `other_${Date.now()}`));
    const [type, body] = other.split(' ');
    const { home, result } = await runSshJob({ 'known-hosts': `[127.0.0.1]:${port} ${type} ${body}` });
    try {
      expect(result.main.exitCode).toBe(1);
      expect(result.errors.join('\n')).toMatch(
        /cannot reach the podman service at ssh:\/\/.*Host key verification failed/s,
      );
      const [scratch] = JSON.parse(result.main.state['remote-build-env']!).removeDirs as string[];
      expect(await pathExists(scratch!)).toBe(false);
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  });

  it('a remote socket path where no service listens fails main with advice, and post leaves nothing', async () => {
    const { runnerTemp } = noService;
    const job = await noService.job;
    expect(job.main.main.exitCode).toBe(1);
    expect(job.main.errors[0]).toContain(
      `is podman's API service listening on ${work}/nothing-here.sock on the remote host`,
    );
    expect((await job.post()).exitCode).toBe(0);
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  it('CLI: a signal while connecting, or once ready, closes the tunnel and leaves nothing', async () => {
    for (const [when, pattern, exit] of [
      ['connecting', /^Connecting to ssh:/m, 1],
      ['ready', /Press Ctrl-C/, 0],
    ] as const) {
      const runnerTemp = newRunnerTemp();
      const home = await newHome();
      const args = sshCliArgs();
      const cli = new CliProcess('remote-build-env', args, {
        ...pm.env,
        RUNNER_TEMP: runnerTemp,
        HOME: home,
      });
      await cli.waitFor(pattern);
      cli.signal('SIGINT');
      cli.signal('SIGTERM');
      expect({ when, exit: await cli.exited, left: await leftovers(runnerTemp) }).toEqual({
        when,
        exit,
        left: [],
      });
      expect(await pathExists(join(home, '.ssh'))).toBe(false);
    }
  });

  it('CLI: `image-ci remote-build-env --mode ssh ... 2>&1 | head -2` keeps going once head is gone, and leaves nothing', async () => {
    const runnerTemp = newRunnerTemp();
    const home = await newHome();
    const head = spawn('head', ['-2'], { stdio: ['pipe', 'ignore', 'inherit'] });
    const headExited = new Promise((resolve) => head.on('exit', resolve));
    const args = sshCliArgs();
    const cli = new CliProcess(
      'remote-build-env',
      args,
      { ...pm.env, RUNNER_TEMP: runnerTemp, HOME: home },
      head.stdin,
    );
    head.stdin.destroy(); // the CLI holds the only writing end, as in a shell pipeline
    await headExited;
    // Its log unread, the CLI must still connect, drop the key and serve: seen on disk.
    const scratchOf = async () => (await readdir(runnerTemp)).find((n) => n.startsWith('ici-'));
    let exited = false;
    void cli.exited.then(() => (exited = true));
    for (;;) {
      const scratch = await scratchOf();
      const files = scratch ? await readdir(join(runnerTemp, scratch)).catch(() => []) : [];
      if (exited || (files.includes('podman.sock') && !files.includes('id'))) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    cli.signal('SIGTERM');
    expect({ exit: await cli.exited, left: await leftovers(runnerTemp) }).toEqual({ exit: 0, left: [] });
  });

  it('two jobs given one socket path, the first still connecting over a slow link when the second starts: the second is refused, and the first is never answered by the second one’s tunnel', async () => {
    // A relay to the sshd that holds each connection until released: the first job's link is slow.
    const held: Array<() => void> = [];
    const streams: Socket[] = [];
    const relay = createServer((client) => {
      streams.push(client);
      client.pause();
      held.push(() => {
        const upstream = createConnection({ host: '127.0.0.1', port });
        streams.push(upstream);
        upstream.on('error', () => client.destroy());
        client.on('error', () => upstream.destroy());
        client.pipe(upstream).pipe(client);
        client.resume();
      });
    });
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
    const relayPort = (relay.address() as AddressInfo).port;
    const socket = join(newRunnerTemp(), 'tunnel.sock');
    const jobs: Promise<SplitJob>[] = [];
    const job = (host: string, known: string) => {
      const started = newHome().then((home) =>
        startSplitJob({
          action: 'remote-build-env',
          inputs: { mode: 'ssh', host, 'ssh-key': clientKey, 'known-hosts': known, socket },
          env: pm.env,
          home,
          runnerTemp: newRunnerTemp(),
        }),
      );
      jobs.push(started);
      return started;
    };
    try {
      const startingA = job(
        `ssh://root@127.0.0.1:${relayPort}${service.socket}`,
        knownHostsEntry(`[127.0.0.1]:${relayPort}`),
      );
      for (let i = 0; held.length === 0; i++) {
        if (i === 300) throw new Error('the first job never connected');
        await new Promise((r) => setTimeout(r, 100));
      }
      const b = await job(hostUrl(), knownHostsLine);
      for (const release of held.splice(0)) release();
      const a = await startingA;
      expect(a.main.errors).toEqual([]);
      // Before: B's tunnel bound the free path; A, checking the path while it connected, was answered by B's
      // tunnel and exported it (its own ssh then failed to bind), and B's post removed the socket A was using.
      expect(b.main.errors).toEqual([
        `Input 'socket': ${socket} is already in use; choose another path or remove it.`,
      ]);
      expect((await b.post()).exitCode).toBe(0);
      expect(await remoteVersion(a.main.exportedEnv, await newHome())).toMatch(/^\d+\.\d+/);
      const post = await a.post();
      expect(post.lines.map((l) => l.text)).toContainEqual(
        expect.stringMatching(/^ssh tunnel \(pid \d+\) stopped\.$/),
      );
      expect(await pathExists(socket)).toBe(false);
    } finally {
      for (const release of held.splice(0)) release();
      for (const started of await Promise.allSettled(jobs)) {
        if (started.status === 'fulfilled' && !started.value.posted) await started.value.post();
      }
      for (const stream of streams) stream.destroy();
      await new Promise((resolve) => relay.close(resolve));
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

  it('insecure-host-key connects without known-hosts, warns, and trusts nothing on first use into ~/.ssh', async () => {
    const unrelated =
      'example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBd8ZyWkq6B0D6JHe1ESsUefQpC7wkxEJ7rsmAYyBR4K\n';
    const { home, result } = await runSshJob({ 'insecure-host-key': 'true' }, unrelated);
    try {
      expect(result.main.exitCode).toBe(0);
      expect(result.warnings.join('\n')).toMatch(/host key of \[127\.0\.0\.1\]:\d+ is not checked/);
      expect(await readFile(join(home, '.ssh/known_hosts'), 'utf8')).toBe(unrelated);
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  });

  it('main SIGKILLed at 40 moments across the connection, then post: no child left, ~/.ssh/known_hosts byte-identical', async () => {
    const before =
      'example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBd8ZyWkq6B0D6JHe1ESsUefQpC7wkxEJ7rsmAYyBR4K\n';
    const trust: Record<string, string>[] = [
      { 'known-hosts': knownHostsLine },
      { 'insecure-host-key': 'true' },
    ];
    const run = async (inputs: Record<string, string>, point?: KillPoint, report?: string) => {
      const home = await newHome(before);
      const runnerTemp = newRunnerTemp();
      const kill = killMainOptions('remote-build-env', CONNECTING, point, report);
      const job = await startSplitJob({
        action: 'remote-build-env',
        inputs: { mode: 'ssh', host: hostUrl(), 'ssh-key': clientKey, ...inputs },
        mainScript: kill.mainScript,
        env: { ...pm.env, ...kill.env },
        home,
        runnerTemp,
      });
      const post = await job.post();
      const problems = await leftovers(runnerTemp);
      if (post.exitCode !== 0) problems.push(`post exited ${post.exitCode}`);
      if ((await readFile(join(home, '.ssh/known_hosts'), 'utf8')) !== before)
        problems.push('known_hosts changed');
      return { main: job.main.main, post, problems };
    };

    const report = `${newRunnerTemp()}.timing.json`;
    const whole = await run(trust[0]!, undefined, report);
    expect(whole.main.exitCode).toBe(0);
    expect(whole.problems).toEqual([]);
    const timing = JSON.parse(await readFile(report, 'utf8')) as { lineMs: number; endMs: number };
    await rm(report);

    const problems: string[] = [];
    let killedWithTunnel = 0;
    // Two jobs at a time, each with its own HOME and RUNNER_TEMP: jest runs one file at a time on two CPUs, and
    // a kill delay counts from that main's own start or line.
    await mapLimit(killPoints(timing.lineMs, timing.endMs), 2, async (point, i) => {
      const inputs = trust[i % 2]!;
      const r = await run(inputs, point);
      const where = `${JSON.stringify(inputs).slice(2, 12)}… killed ${point.delayMs} ms after ${point.afterLine ? 'the connect line' : 'start'}`;
      if (r.problems.length)
        problems.push(`${where} (main exit ${r.main.exitCode}): ${r.problems.join('; ')}`);
      if (r.main.exitCode === 137 && r.post.lines.some((l) => /^ssh tunnel \(pid \d+\)/.test(l.text)))
        killedWithTunnel++;
    });
    expect(problems).toEqual([]);
    expect(killedWithTunnel).toBeGreaterThan(0);
  }, 900_000);
});
