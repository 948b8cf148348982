/** How this action calls the podman client, and what it needs to know about the installed version. */
import { exec, type ExecResult } from '../../core/exec.js';

/**
 * Variables that turn podman into a remote client or point it elsewhere. A later step may have exported them
 * (even this action, used twice in a job); the service itself and our own checks must not inherit them.
 */
const REMOTE_CLIENT_VARIABLES = ['CONTAINER_HOST', 'CONTAINER_CONNECTION', 'CONTAINER_SSHKEY', 'DOCKER_HOST'];

export function withoutRemoteClientEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const clean = { ...env };
  for (const name of REMOTE_CLIENT_VARIABLES) delete clean[name];
  return clean;
}

export interface Version {
  major: number;
  minor: number;
  patch: number;
  text: string;
}

export function parseVersion(text: string): Version | undefined {
  const m = /(\d+)\.(\d+)(?:\.(\d+))?/.exec(text);
  if (!m) return undefined;
  return { major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3] ?? 0), text: m[0] };
}

/** CONTAINERS_CONF_OVERRIDE (layered on top of the normal files) arrived in podman 4.4; before it only
 * CONTAINERS_CONF existed, which replaces every other containers.conf. */
export function containersConfVariable(version: Version): 'CONTAINERS_CONF' | 'CONTAINERS_CONF_OVERRIDE' {
  return version.major > 4 || (version.major === 4 && version.minor >= 4)
    ? 'CONTAINERS_CONF_OVERRIDE'
    : 'CONTAINERS_CONF';
}

export async function podmanClientVersion(timeoutMs: number): Promise<Version> {
  const r = await exec('podman', ['version', '--format', '{{.Client.Version}}'], {
    timeoutMs,
    env: withoutRemoteClientEnv(process.env),
  });
  const version = parseVersion(r.stdout);
  if (!version) throw new Error(`cannot read the podman version from '${r.stdout.trim()}'`);
  return version;
}

export interface RemoteCallOptions {
  timeoutMs: number;
  allowFailure?: boolean;
}

/** Runs `podman --url <url> ...` as a client of one particular service, whatever CONTAINER_HOST says. */
export function podmanRemote(
  url: string,
  args: readonly string[],
  options: RemoteCallOptions,
): Promise<ExecResult> {
  return exec('podman', ['--url', url, ...args], {
    timeoutMs: options.timeoutMs,
    env: withoutRemoteClientEnv(process.env),
    allowFailure: options.allowFailure,
  });
}
