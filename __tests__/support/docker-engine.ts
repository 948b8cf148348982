/**
 * A real Docker engine for tests (Debian's `docker.io`: dockerd, with its own containerd): started as root on a
 * private unix socket with its data, exec root and pidfile in a temp dir, no bridge and no iptables changes, so
 * it touches nothing of the machine's. Stopping it unmounts what dockerd mounted below the dir, then removes it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from 'undici';
import { exec, type ExecResult } from '../../src/core/exec.js';
import { unmountUnder } from '../../src/actions/remote-build-env/mounts.js';

export interface DockerEngineService {
  /** `unix://<socket>`, for DOCKER_HOST. */
  host: string;
  dir: string;
  /** Runs the docker CLI against this engine. */
  docker(args: readonly string[], options?: { allowFailure?: boolean }): Promise<ExecResult>;
  log(): string;
  stop(): Promise<void>;
}

async function ping(socketPath: string): Promise<boolean> {
  const agent = new Agent({ connect: { socketPath } });
  try {
    const response = await agent.request({
      origin: 'http://docker',
      path: '/_ping',
      method: 'GET',
      headersTimeout: 2000,
    });
    await response.body.dump();
    return response.statusCode === 200;
  } catch {
    return false;
  } finally {
    await agent.close();
  }
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  return exited.finally(() => clearTimeout(timer));
}

export async function startDockerEngine(): Promise<DockerEngineService> {
  // Short: containerd's socket lives below the exec root, and unix socket paths must stay under 108 bytes.
  const dir = mkdtempSync(join(tmpdir(), 'ici-dk-'));
  const socket = join(dir, 'docker.sock');
  const logFile = join(dir, 'dockerd.log');
  const engineTmp = join(dir, 'tmp');
  mkdirSync(engineTmp);
  const fd = openSync(logFile, 'a');
  const child = spawn(
    'dockerd',
    [
      '--bridge=none',
      '--iptables=false',
      '--ip6tables=false',
      '-H',
      `unix://${socket}`,
      '--data-root',
      join(dir, 'data'),
      '--exec-root',
      join(dir, 'exec'),
      '--pidfile',
      join(dir, 'dockerd.pid'),
    ],
    // containerd dumps its stacks into TMPDIR when dockerd finds it slow to answer (a loaded machine): in the
    // engine's own dir, that goes with it.
    { stdio: ['ignore', fd, fd], env: { ...process.env, TMPDIR: engineTmp } },
  );
  closeSync(fd);
  const host = `unix://${socket}`;
  const log = () => {
    try {
      return readFileSync(logFile, 'utf8');
    } catch {
      return '';
    }
  };
  const stop = async () => {
    await stopChild(child);
    await unmountUnder(dir);
    rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 60_000;
  while (!(await ping(socket))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      const text = log();
      await stop();
      throw new Error(`dockerd did not start:\n${text.slice(-3000)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return {
    host,
    dir,
    docker: (args, options = {}) =>
      exec('docker', ['-H', host, ...args], { timeoutMs: 120_000, allowFailure: options.allowFailure }),
    log,
    stop,
  };
}
