/**
 * A real Docker engine for tests (Debian's `docker.io`: dockerd, with its own containerd): started as root on a
 * private unix socket with its data, exec root and pidfile in a temp dir, no bridge and no iptables changes, so
 * it touches nothing of the machine's. Stopping it unmounts what dockerd mounted below the dir, then removes it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer, request as httpRequest } from 'node:http';
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

export interface EngineRelay {
  /** `unix://<socket>`, for DOCKER_HOST. */
  host: string;
  /** Every request's path as it arrived, in order. */
  paths: string[];
  stop(): Promise<void>;
}

/**
 * A relay on a unix socket in front of a real engine's socket, for what an engine cannot be made to do on cue:
 * `before` sees each request's path before the engine does, and may act first (re-tag an image mid-step) or
 * return another path to ask the engine in its place (an engine answering another image, or two).
 */
export async function startEngineRelay(
  engineHost: string,
  before: (path: string) => Promise<string | void> | string | void,
): Promise<EngineRelay> {
  const target = engineHost.replace(/^unix:\/\//, '');
  const dir = mkdtempSync(join(tmpdir(), 'ici-er-'));
  const socket = join(dir, 'relay.sock');
  const paths: string[] = [];
  const server = createServer((req, res) => {
    const path = req.url ?? '/';
    paths.push(path);
    void (async () => (await before(path)) ?? path)().then(
      (asked) => {
        const upstream = httpRequest(
          { socketPath: target, path: asked, method: req.method, headers: req.headers, timeout: 60_000 },
          (answer) => {
            res.writeHead(answer.statusCode ?? 502, answer.headers);
            answer.pipe(res);
          },
        );
        upstream.on('error', () => res.destroy());
        upstream.on('timeout', () => upstream.destroy());
        req.pipe(upstream);
      },
      (error: unknown) => {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ message: `relay: ${String(error)}` }));
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socket, resolve);
  });
  return {
    host: `unix://${socket}`,
    paths,
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
