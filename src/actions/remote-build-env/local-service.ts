/**
 * Starts `podman system service` so that it outlives this node process: the runner ends the main step when its
 * node process exits, and later steps of the job must still reach the service. Hence a detached child (its own
 * session and process group, which post signals as a whole), no pipes back to us (stdio goes to a log file),
 * and unref() so our event loop does not wait for it.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { pathExists } from '../../core/files.js';
import { sleep } from '../../core/process.js';
import { ActionError } from '../../core/run.js';
import { identify, type ProcessIdentity } from './process-group.js';
import { podmanRemote, withoutRemoteClientEnv } from './podman.js';

export interface ServicePlan {
  socket: string;
  /** The service's TMPDIR: buildah keeps `RUN --mount=type=cache` data below it (see cacheMountDir). */
  tmpdir: string;
  logFile: string;
  /** A private image store instead of the default one. */
  storage?: { root: string; runroot: string; libpodTmp: string };
  containersConf?: { path: string; variable: 'CONTAINERS_CONF' | 'CONTAINERS_CONF_OVERRIDE' };
}

export function socketUrl(socket: string): string {
  return `unix://${socket}`;
}

/** The command line and environment of the service; pure so the plan can be checked without podman. */
export function serviceCommand(
  plan: ServicePlan,
  baseEnv: NodeJS.ProcessEnv,
): { args: string[]; env: NodeJS.ProcessEnv } {
  const args: string[] = [];
  if (plan.storage) {
    args.push(
      '--root',
      plan.storage.root,
      '--runroot',
      plan.storage.runroot,
      '--tmpdir',
      plan.storage.libpodTmp,
    );
  }
  // info level makes the log an access log of API calls: what a failed job's log needs to show.
  args.push('--log-level', 'info', 'system', 'service', '--time=0', socketUrl(plan.socket));
  const env = withoutRemoteClientEnv(baseEnv);
  env.TMPDIR = plan.tmpdir;
  if (plan.containersConf) env[plan.containersConf.variable] = plan.containersConf.path;
  return { args, env };
}

export interface StartedService {
  identity: ProcessIdentity;
  /** Resolves with the exit code if the service exits while we still watch it. */
  exited: Promise<number>;
}

export async function spawnService(plan: ServicePlan): Promise<StartedService> {
  const { args, env } = serviceCommand(plan, process.env);
  const log = openSync(plan.logFile, 'a', 0o600);
  let child;
  try {
    child = spawn('podman', args, { detached: true, stdio: ['ignore', log, log], env });
  } finally {
    closeSync(log); // the child holds its own copy of the descriptor
  }
  const spawned = new Promise<number>((resolve, reject) => {
    child.once('spawn', () => resolve(child.pid!));
    child.once('error', (e) => reject(new ActionError(`cannot start podman: ${e.message}`)));
  });
  const exited = new Promise<number>((resolve) =>
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1))),
  );
  const pid = await spawned;
  child.unref();
  return { identity: await identify(pid), exited };
}

export async function logTail(logFile: string, lines = 20): Promise<string> {
  try {
    return (await readFile(logFile, 'utf8')).trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

const POLL_MS = 100;
/** One `podman info` attempt may hang on a half-started service; bound it so the overall timeout holds. */
const PROBE_TIMEOUT_MS = 10_000;

/** Waits until the service answers `podman --url ... info`; returns the server's version. */
export async function waitUntilAnswering(
  plan: ServicePlan,
  service: StartedService,
  timeoutMs: number,
): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let exitCode: number | undefined;
  void service.exited.then((code) => (exitCode = code));
  let lastProblem = 'the socket never appeared';
  for (;;) {
    if (exitCode !== undefined) {
      throw new ActionError(
        `podman system service exited with code ${exitCode} before it answered. Its log ends with:\n${await logTail(plan.logFile)}`,
      );
    }
    if (await pathExists(plan.socket)) {
      const remaining = Math.max(1000, deadline - Date.now());
      const r = await podmanRemote(socketUrl(plan.socket), ['info', '--format', '{{.Version.Version}}'], {
        timeoutMs: Math.min(remaining, PROBE_TIMEOUT_MS),
        allowFailure: true,
      }).catch((e: Error) => ({ exitCode: -1, stdout: '', stderr: e.message }));
      if (r.exitCode === 0) return r.stdout.trim();
      lastProblem = r.stderr.trim() || `podman info exited with ${r.exitCode}`;
    }
    if (Date.now() >= deadline) {
      throw new ActionError(
        `the podman service did not answer within ${Math.round(timeoutMs / 1000)} s (${lastProblem}); ` +
          `raise \`startup-timeout\` if the machine is slow. Its log ends with:\n${await logTail(plan.logFile)}`,
      );
    }
    await sleep(POLL_MS);
  }
}
