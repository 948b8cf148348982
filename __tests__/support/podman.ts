/**
 * Podman for tests, TEST-ONLY configuration: this sandbox has no crun and refuses podman's default ulimits, so
 * tests use a containers.conf with `runtime = "runc"` and no default ulimits (product code never writes this),
 * and image storage under a temp dir so tests never touch the machine's own storage.
 *
 * Everything a test runs with podman must get `env` (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF); the harness
 * takes it as `runAction({env})`.
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exec, type ExecResult } from '../../src/core/exec.js';
import { unmountUnder } from '../../src/actions/remote-build-env/mounts.js';
import { isRunning, identify, stopProcessGroup } from '../../src/actions/remote-build-env/process-group.js';

/** The test-only settings podman needs in this sandbox. */
export const TEST_CONTAINERS_CONF = `[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n`;

export interface PodmanTestEnv {
  /** A short temp dir (socket paths must stay short) holding the configs and the storage. */
  dir: string;
  containersConf: string;
  storageConf: string;
  /** Env for podman and for actions under test (pass to the harness). */
  env: Record<string, string>;
  /** Runs the local podman with this env (no CONTAINER_HOST leaks in from the test process). */
  podman(
    args: readonly string[],
    options?: { timeoutMs?: number; allowFailure?: boolean },
  ): Promise<ExecResult>;
  /** Runs `podman --url <url> ...` against a service. */
  remote(
    url: string,
    args: readonly string[],
    options?: { timeoutMs?: number; allowFailure?: boolean },
  ): Promise<ExecResult>;
  /**
   * Starts `podman system service --time=0 unix://<sock>` the plain way a user would, WITHOUT the action: the
   * baseline the action is compared against. `tmpdir` defaults to a private dir; give two services one dir to
   * reproduce a single shared default service.
   */
  startService(options?: { name?: string; tmpdir?: string }): Promise<TestPodmanService>;
  /** Stops every service started from this env, unmounts and deletes the dir. */
  remove(): Promise<void>;
}

export interface TestPodmanService {
  socket: string;
  url: string;
  pid: number;
  /** The service's TMPDIR: its cache mounts live in `<tmpdir>/buildah-cache`. */
  tmpdir: string;
  logFile: string;
  stop(): Promise<void>;
}

const DEFAULT_TIMEOUT_MS = 120_000;

function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  for (const name of [
    'CONTAINER_HOST',
    'CONTAINER_CONNECTION',
    'CONTAINER_SSHKEY',
    'DOCKER_HOST',
    'NODE_OPTIONS',
  ]) {
    delete env[name];
  }
  return env;
}

async function waitForService(testEnv: PodmanTestEnv, service: TestPodmanService): Promise<void> {
  const identity = await identify(service.pid);
  const deadline = Date.now() + 30_000;
  for (;;) {
    const r = await testEnv.remote(service.url, ['info', '--format', '{{.Version.Version}}'], {
      timeoutMs: 10_000,
      allowFailure: true,
    });
    if (r.exitCode === 0) return;
    if (!(await isRunning(identity)) || Date.now() > deadline) {
      throw new Error(
        `podman service did not start: ${r.stderr}\n${await readFile(service.logFile, 'utf8')}`,
      );
    }
    await new Promise((res) => setTimeout(res, 100));
  }
}

async function spawnService(
  dir: string,
  env: Record<string, string>,
  options: { name?: string; tmpdir?: string },
): Promise<TestPodmanService> {
  const name = options.name ?? `svc-${Math.random().toString(36).slice(2, 8)}`;
  const socket = join(dir, `${name}.sock`);
  const tmpdir = options.tmpdir ?? join(dir, `${name}-tmp`);
  await mkdir(tmpdir, { recursive: true });
  const logFile = join(dir, `${name}.log`);
  const log = openSync(logFile, 'a');
  let child;
  try {
    child = spawn('podman', ['system', 'service', '--time=0', `unix://${socket}`], {
      detached: true,
      stdio: ['ignore', log, log],
      env: cleanEnv({ ...env, TMPDIR: tmpdir }),
    });
  } finally {
    closeSync(log);
  }
  child.unref();
  if (!child.pid) throw new Error('could not spawn podman');
  const identity = await identify(child.pid);
  return {
    socket,
    url: `unix://${socket}`,
    pid: child.pid,
    tmpdir,
    logFile,
    async stop() {
      await stopProcessGroup(identity, 10_000);
      await rm(socket, { force: true });
    },
  };
}

export async function createPodmanTestEnv(): Promise<PodmanTestEnv> {
  const dir = mkdtempSync('/tmp/ici-pm-');
  const containersConf = join(dir, 'containers.conf');
  const storageConf = join(dir, 'storage.conf');
  await writeFile(containersConf, TEST_CONTAINERS_CONF);
  // overlay, as on CI runners; it leaves mounts behind, which remove() undoes.
  await writeFile(
    storageConf,
    `[storage]\ndriver = "overlay"\ngraphroot = "${dir}/storage"\nrunroot = "${dir}/run"\n`,
  );
  const env = { CONTAINERS_CONF: containersConf, CONTAINERS_STORAGE_CONF: storageConf };
  const services: TestPodmanService[] = [];
  const run = (args: readonly string[], options: { timeoutMs?: number; allowFailure?: boolean } = {}) =>
    exec('podman', args, {
      timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      allowFailure: options.allowFailure,
      env: cleanEnv(env),
    });
  const testEnv: PodmanTestEnv = {
    dir,
    containersConf,
    storageConf,
    env,
    podman: run,
    remote: (url, args, options) => run(['--url', url, ...args], options),
    async startService(options = {}) {
      const service = await spawnService(dir, env, options);
      services.push(service); // before waiting: remove() must stop it even if it never answers
      await waitForService(testEnv, service);
      return service;
    },
    async remove() {
      for (const s of services) await s.stop();
      await unmountUnder(dir);
      await rm(dir, { recursive: true, force: true });
    },
  };
  return testEnv;
}
