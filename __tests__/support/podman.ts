/**
 * Podman for tests, TEST-ONLY configuration (product code never writes this): this sandbox refuses what podman
 * asks of the kernel by default, so tests use a containers.conf that asks less (see testContainersConf), and
 * image storage under a temp dir so tests never touch the machine's own storage. One env per row of the podman
 * matrix (podman-matrix.ts): the host's podman 4 or podman 5 inside the trixie root.
 *
 * Everything a test runs with podman must get `env` (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF); the harness
 * takes it as `runAction({env})`.
 */
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, closeSync, mkdirSync, mkdtempSync, openSync, readFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecResult } from '../../src/core/exec.js';
import { unmountUnder } from '../../src/actions/remote-build-env/mounts.js';
import { pauseProcess } from '../../src/actions/remote-build-env/local-service.js';
import {
  isRunning,
  identify,
  stopProcess,
  stopProcessGroup,
} from '../../src/actions/remote-build-env/process-group.js';
import { commandFor, hostPodman, runWith, type PodmanVariant, type User } from './podman-matrix.js';

/** Hard limits of this process (`unlimited` gives undefined) from /proc/self/limits. */
function hardLimit(name: string): number | undefined {
  const line = readFileSync('/proc/self/limits', 'utf8')
    .split('\n')
    .find((l) => l.startsWith(name));
  const hard = line?.slice(name.length).trim().split(/\s+/)[1];
  return hard && /^\d+$/.test(hard) ? Number(hard) : undefined;
}

/**
 * The test-only containers.conf for a podman major version. Always `runtime = "runc"`: crun refuses this host's
 * hybrid cgroups. The sandbox lacks CAP_SYS_RESOURCE, so no container may get a higher rlimit than the podman
 * process has:
 * - podman 4.3 (its buildah) sets no nofile/nproc of its own once `default_ulimits = []` replaces the distro's
 *   list, so containers keep podman's limits (podman lowers its own nproc at start, so pinning the host's
 *   hard limits would be too high for it).
 * - podman 5 (buildah 1.39 `addRlimits`) sets RLIMIT_NOFILE and RLIMIT_NPROC to 1048576 for rootful RUN steps
 *   whenever they are not given, whatever `default_ulimits` says otherwise: runc then fails with
 *   `error setting rlimit type 7` (nofile) or, once nofile is given, `type 6` (nproc). So both are pinned to
 *   this process's hard limits. Its RUN steps use the host network: the netavark of podman 4 (iptables) and of
 *   podman 5 (nftables) would otherwise manage one `podman0` bridge and 10.88.0.0/16 in this one network
 *   namespace, and nothing here tests container networking.
 */
export function testContainersConf(major: number, rootless = false): string {
  // Rootless RUN steps get the host network too: slirp4netns fails here (`failed to read from slirp4netns sync
  // pipe: EOF`).
  const netns = rootless ? 'netns = "host"\n' : '';
  if (major < 5) return `[containers]\ndefault_ulimits = []\n${netns}\n[engine]\nruntime = "runc"\n`;
  const limits: string[] = [];
  for (const [name, label] of [
    ['nofile', 'Max open files'],
    ['nproc', 'Max processes'],
  ]) {
    const n = hardLimit(label!);
    if (n !== undefined) limits.push(`"${name}=${n}:${n}"`);
  }
  return (
    `[containers]\ndefault_ulimits = [${limits.join(', ')}]\nnetns = "host"\n\n` +
    `[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n`
  );
}

export interface PodmanOptions {
  timeoutMs?: number;
  allowFailure?: boolean;
  /** Added after the clean env (e.g. a job's exported CONTAINER_HOST for a `--remote` client). */
  env?: Record<string, string>;
}

export interface PodmanTestEnv {
  /** The podman this env runs: the host's or the trixie root's. */
  variant: PodmanVariant;
  /** Set for a rootless env: podman() and remote() run as this user (services: as root only). */
  user?: User;
  /** A short temp dir (socket paths must stay short) holding the configs and the storage. */
  dir: string;
  containersConf: string;
  storageConf: string;
  /** Env for podman and for actions under test (pass to the harness). */
  env: Record<string, string>;
  /** Runs this env's podman (no CONTAINER_HOST leaks in from the test process unless options.env says so). */
  podman(args: readonly string[], options?: PodmanOptions): Promise<ExecResult>;
  /** Runs `podman --url <url> ...` against a service. */
  remote(url: string, args: readonly string[], options?: PodmanOptions): Promise<ExecResult>;
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
  /** The service's TMPDIR: its cache mounts live below it (see buildahCacheDir). */
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
  variant: PodmanVariant,
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
    // Inside a root, chroot and env exec into podman: the pid is podman's, leading its own process group.
    const line = commandFor(variant, 'podman', ['system', 'service', '--time=0', `unix://${socket}`], {
      env: cleanEnv({ ...env, TMPDIR: tmpdir }),
    });
    child = spawn(line.command, line.args, { detached: true, stdio: ['ignore', log, log], env: line.env });
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

/** Pids whose command line names `dir`: conmon and podman's `container cleanup` for this env's storage. */
async function processesUsing(dir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    const cmdline = await readFile(`/proc/${name}/cmdline`, 'latin1').catch(() => '');
    if (cmdline.split('\0').some((arg) => arg === dir || arg.startsWith(`${dir}/`))) pids.push(Number(name));
  }
  return pids;
}

/**
 * `podman run --rm` returns before its conmon has run `podman container cleanup --rm`, which still writes to the
 * storage: deleting the dir under it fails (ENOTEMPTY) or leaves the cleanup behind. So wait for them to finish,
 * and kill what is still there after a while.
 */
async function waitForCleanups(dir: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (let pids = await processesUsing(dir); pids.length > 0; pids = await processesUsing(dir)) {
    if (Date.now() > deadline) {
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
    }
    await new Promise((res) => setTimeout(res, 100));
  }
}

/**
 * Rootless podman as `user` (it needs /etc/subuid and /etc/subgid ranges, which `useradd` gave the test user):
 * the env's dir becomes the user's, with a HOME and an XDG_RUNTIME_DIR in it, and image storage in it too
 * (rootless podman ignores `graphroot`, it reads `rootless_storage_path`).
 */
function rootlessDirs(dir: string, user: User): Record<string, string> {
  const home = join(dir, 'home');
  const runtime = join(dir, 'xdg-run');
  for (const d of [home, runtime]) mkdirSync(d, { mode: 0o700 });
  for (const d of [dir, home, runtime]) chownSync(d, user.uid, user.gid);
  chmodSync(dir, 0o755);
  return { HOME: home, XDG_RUNTIME_DIR: runtime };
}

export async function createPodmanTestEnv(
  variant: PodmanVariant = hostPodman(),
  options: { user?: User; pivot?: boolean } = {},
): Promise<PodmanTestEnv> {
  const { user, pivot } = options;
  const dir = mkdtempSync(join(tmpdir(), 'ici-pm-'));
  const containersConf = join(dir, 'containers.conf');
  const storageConf = join(dir, 'storage.conf');
  await writeFile(containersConf, testContainersConf(variant.major, user !== undefined));
  // overlay, as on CI runners; it leaves mounts behind, which remove() undoes.
  await writeFile(
    storageConf,
    `[storage]\ndriver = "overlay"\ngraphroot = "${dir}/storage"\nrunroot = "${dir}/run"\n` +
      (user ? `rootless_storage_path = "${dir}/storage"\n` : ''),
  );
  const env: Record<string, string> = {
    CONTAINERS_CONF: containersConf,
    CONTAINERS_STORAGE_CONF: storageConf,
    ...(user ? rootlessDirs(dir, user) : {}),
  };
  const services: TestPodmanService[] = [];
  const run = (args: readonly string[], options: PodmanOptions = {}) =>
    runWith(variant, 'podman', args, {
      timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      allowFailure: options.allowFailure,
      env: { ...cleanEnv(env), ...options.env },
      ...(user ? { user, pivot, cwd: '/' } : {}),
    });
  const testEnv: PodmanTestEnv = {
    variant,
    ...(user ? { user } : {}),
    dir,
    containersConf,
    storageConf,
    env,
    podman: run,
    remote: (url, args, options) => run(['--url', url, ...args], options),
    async startService(options = {}) {
      if (user)
        throw new Error('startService runs podman as root; rootless services are started by the action');
      const service = await spawnService(variant, dir, env, options);
      services.push(service); // before waiting: remove() must stop it even if it never answers
      await waitForService(testEnv, service);
      return service;
    },
    async remove() {
      for (const s of services) await s.stop();
      await waitForCleanups(dir);
      // Rootless podman's pause process outlives every command; on a runner it is the user session's, here ours.
      const pause = user ? await pauseProcess(env.XDG_RUNTIME_DIR!, user.uid) : undefined;
      if (pause) await stopProcess(pause, 5_000);
      // A podman inside a root mounts its overlays below the root's mount point.
      if (variant.root !== '/') await unmountUnder(join(variant.root, dir));
      await unmountUnder(dir);
      await rm(dir, { recursive: true, force: true });
    },
  };
  return testEnv;
}
