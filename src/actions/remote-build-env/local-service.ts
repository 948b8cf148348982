/**
 * Starts `podman system service` so that it outlives this node process: the runner ends the main step when its
 * node process exits, and later steps of the job must still reach the service. Hence a tracked child (tracked.ts:
 * its own session and process group, which post finds and signals as a whole, however main ended).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exec, type ExecResult } from '../../core/exec.js';
import { withoutRemoteClientEnv, type ContainersConfVariable } from '../../core/podman.js';
import { CONTROL_CHARACTER } from './inputs.js';
import { identify, isRunning, type ProcessIdentity } from './process-group.js';
import { spawnTracked, type TrackedChild } from './tracked.js';

export interface ServicePlan {
  socket: string;
  /** The service's TMPDIR: buildah keeps `RUN --mount=type=cache` data below it (see cacheMountDir). */
  tmpdir: string;
  logFile: string;
  /** A private image store instead of the default one. */
  /**
   * A private image store instead of the default one; `libpodTmp` only rootful: rootless podman keeps its pause
   * process's pid file there, and post's `podman unshare` must join that same user namespace (and its mounts).
   */
  storage?: { root: string; runroot: string; libpodTmp?: string };
  containersConf?: { path: string; variable: ContainersConfVariable };
  /** containers.conf modules (`--module`, podman 4.8 on) loaded on top of the files podman reads. */
  modules?: string[];
}

/**
 * Set to the service's TMPDIR (one per job) in its environment, which podman hands on to the conmon of every
 * container it starts: how post tells this job's containers in a shared store (job-containers.ts).
 */
export const SERVICE_MARK_VARIABLE = 'LC_IMAGE_CI_SERVICE';

/**
 * `unix://` + the path, percent-encoded: podman parses CONTAINER_HOST and its own listen address as URLs and
 * takes the decoded path, so a raw `%`, `#` or `?` in a dir name would fail to parse or cut the path short.
 */
export function socketUrl(socket: string): string {
  return `unix://${socket.split('/').map(encodeURIComponent).join('/')}`;
}

/**
 * DOCKER_HOST for the socket, or undefined when the docker CLI cannot reach it. Docker checks that the value
 * parses as a URL but then dials the text after `unix://` as it stands, undecoded: the raw path is right, and a
 * `%` that starts no valid escape (or a control character) is a path docker cannot be pointed at at all.
 */
export function dockerHost(socket: string): string | undefined {
  const unparsable = /%(?![0-9A-Fa-f]{2})/.test(socket) || CONTROL_CHARACTER.test(socket);
  return unparsable ? undefined : `unix://${socket}`;
}

/**
 * The podman global flags and containers.conf variable of the service: what a podman of post's own needs to see the
 * same store and configuration (podmanLocal) when the service is gone.
 */
export function serviceOptions(plan: ServicePlan): { args: string[]; env: Record<string, string> } {
  const args: string[] = [];
  if (plan.storage) {
    args.push('--root', plan.storage.root, '--runroot', plan.storage.runroot);
    if (plan.storage.libpodTmp) args.push('--tmpdir', plan.storage.libpodTmp);
  }
  for (const module of plan.modules ?? []) args.push('--module', module);
  const env: Record<string, string> = {};
  if (plan.containersConf) env[plan.containersConf.variable] = plan.containersConf.path;
  return { args, env };
}

/** The command line and environment of the service; pure so the plan can be checked without podman. */
export function serviceCommand(
  plan: ServicePlan,
  baseEnv: NodeJS.ProcessEnv,
): { args: string[]; env: NodeJS.ProcessEnv } {
  const options = serviceOptions(plan);
  // info level makes the log an access log of API calls: what a failed job's log needs to show.
  const args = [
    ...options.args,
    '--log-level',
    'info',
    'system',
    'service',
    '--time=0',
    socketUrl(plan.socket),
  ];
  const env = withoutRemoteClientEnv(baseEnv);
  env.TMPDIR = plan.tmpdir;
  env[SERVICE_MARK_VARIABLE] = plan.tmpdir;
  Object.assign(env, options.env);
  return { args, env };
}

export const SERVICE = 'service';

/** Starts the service registered under SERVICE in `registry` (see tracked.ts). */
export function spawnService(plan: ServicePlan, registry: string): Promise<TrackedChild> {
  const { args, env } = serviceCommand(plan, process.env);
  return spawnTracked(registry, SERVICE, 'podman', args, { env, logFile: plan.logFile });
}

/** Runs podman with `args`: through a service, or by itself on the store a service used. */
export type PodmanClient = (
  args: readonly string[],
  options: { timeoutMs: number; allowFailure?: boolean },
) => Promise<ExecResult>;

/** Runs `podman --url <url> ...` as a client of one particular service, whatever CONTAINER_HOST says. */
export function podmanRemote(url: string): PodmanClient {
  return (args, options) =>
    exec('podman', ['--url', url, ...args], {
      timeoutMs: options.timeoutMs,
      env: withoutRemoteClientEnv(process.env),
      allowFailure: options.allowFailure,
    });
}

/** Runs podman itself with a service's options (serviceOptions), never as a remote client. */
export function podmanLocal(options: { args: readonly string[]; env: Record<string, string> }): PodmanClient {
  return (args, run) =>
    exec('podman', [...options.args, ...args], {
      timeoutMs: run.timeoutMs,
      env: { ...withoutRemoteClientEnv(process.env), ...options.env },
      allowFailure: run.allowFailure,
    });
}

/** What podman names its pause process: catatonit's, or podman's own (`podman pause`) where catatonit is missing. */
const PAUSE_COMMAND = /^(catatonit|podman pause)$/;

/**
 * Rootless podman's pause process for `runtimeDir` (its XDG_RUNTIME_DIR): it holds the user namespace that every
 * podman command with that runtime dir joins (`podman unshare` too), and outlives them all. Undefined when none
 * runs. The pid file outlives the process it names: once that pid is reused (pids wrap within minutes on a busy
 * runner), it names a stranger, which post must not stop. So the process must also be named as podman names its
 * pause process, and be `uid`'s (this user's).
 */
export async function pauseProcess(
  runtimeDir: string,
  uid = process.getuid?.(),
): Promise<ProcessIdentity | undefined> {
  const text = await readFile(join(runtimeDir, 'libpod/tmp/pause.pid'), 'utf8').catch(() => '');
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  const identity = await identify(pid);
  const [comm, status] = await Promise.all(
    ['comm', 'status'].map((name) => readFile(`/proc/${pid}/${name}`, 'utf8').catch(() => '')),
  );
  const owner = /^Uid:\s+(\d+)/m.exec(status!)?.[1];
  if (!PAUSE_COMMAND.test(comm!.trim()) || owner !== String(uid)) return undefined;
  return (await isRunning(identity)) ? identity : undefined;
}
