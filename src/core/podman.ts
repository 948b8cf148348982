/**
 * What more than one action needs to know about the installed podman client: its version, which variable
 * layers a containers.conf on top of the user's (that depends on the version), and which variables would turn
 * a podman call into a remote call somewhere else.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exec, type ExecResult } from './exec.js';
import { ActionError } from './run.js';

export interface PodmanVersion {
  major: number;
  minor: number;
  patch: number;
  /** As podman spells it, suffix included (`5.3.0-dev`). */
  text: string;
}

const VERSION_TIMEOUT_MS = 30_000;

/** Reads `podman version 5.2.1`, `5.3.0-dev` or a bare `4.3` (patch 0) out of `text`. */
export function parsePodmanVersion(text: string): PodmanVersion | undefined {
  const m = /(\d+)\.(\d+)(?:\.(\d+))?(\S*)/.exec(text);
  if (!m) return undefined;
  return { major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3] ?? 0), text: m[0] };
}

/**
 * Variables that turn podman into a remote client or point it elsewhere. A step before may have exported them
 * (remote-build-env does, for the steps after it); a service we start and our own version checks must not
 * inherit them.
 */
const REMOTE_CLIENT_VARIABLES = ['CONTAINER_HOST', 'CONTAINER_CONNECTION', 'CONTAINER_SSHKEY', 'DOCKER_HOST'];

export function withoutRemoteClientEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const clean = { ...env };
  for (const name of REMOTE_CLIENT_VARIABLES) delete clean[name];
  return clean;
}

/** Set by unshareStoreBelow. */
let unshareStore: string | undefined;

/**
 * Gives execAsStorageRoot's `podman unshare` a store of its own below `dir` (process-wide, like the runtime dir it
 * goes with; undefined: the user's store again). Podman records the runroot and tmp dir of the first command that
 * opens a store in that store's database, and every later command on it uses those instead of its own (naming
 * others is refused: `database configuration mismatch`). So a runtime dir that is gone after the job must never
 * be what opens the user's store: every later podman of that user would make it again and keep its state there.
 * `podman unshare` needs no store, only the user namespace, which the runtime dir's pause process holds.
 */
export function unshareStoreBelow(dir: string | undefined): void {
  unshareStore = dir;
}

/**
 * Runs `command` as root of rootless podman's user namespace (`podman unshare`), where this user is root over
 * its own id and its /etc/subuid range: what rootless builds write belongs to those ids, out of this user's
 * reach outside it. As root it runs directly. Never as a remote client: `podman unshare` refuses to be one, and
 * a step before may have exported CONTAINER_HOST.
 */
export async function execAsStorageRoot(
  command: string,
  args: readonly string[],
  options: { timeoutMs: number; input?: string; allowFailure?: boolean },
): Promise<ExecResult> {
  const env = withoutRemoteClientEnv(process.env);
  if (process.getuid?.() === 0) return exec(command, args, { ...options, env });
  if (!unshareStore) return exec('podman', ['unshare', command, ...args], { ...options, env });
  // vfs: the store stays empty, and vfs works on any file system, where overlay may not for this user. A file of
  // its own instead of the user's (or the job's CONTAINERS_STORAGE_CONF), and no `--runroot`: podman refuses one
  // over 50 characters, which `<RUNNER_TEMP>/ici-…/u` is on a self-hosted runner; rootless, it then takes
  // `$XDG_RUNTIME_DIR/containers`, below the same dir.
  const conf = join(unshareStore, 'unshare-storage.conf');
  await writeFile(conf, '[storage]\ndriver = "vfs"\n');
  return exec('podman', ['--root', join(unshareStore, 'store'), 'unshare', command, ...args], {
    ...options,
    env: { ...env, CONTAINERS_STORAGE_CONF: conf },
  });
}

/** The local client's version (`podman --version` never contacts a service). */
export async function podmanVersion(timeoutMs = VERSION_TIMEOUT_MS): Promise<PodmanVersion> {
  const r = await exec('podman', ['--version'], { timeoutMs, env: withoutRemoteClientEnv(process.env) });
  const version = parsePodmanVersion(r.stdout);
  if (!version)
    throw new ActionError(`cannot read a version from \`podman --version\`: '${r.stdout.trim()}'`);
  return version;
}

export const CONTAINERS_CONF = 'CONTAINERS_CONF';
export const CONTAINERS_CONF_OVERRIDE = 'CONTAINERS_CONF_OVERRIDE';
export type ContainersConfVariable = typeof CONTAINERS_CONF | typeof CONTAINERS_CONF_OVERRIDE;

/**
 * CONTAINERS_CONF_OVERRIDE (read on top of the normal containers.conf files) arrived in podman 4.4; before it
 * only CONTAINERS_CONF existed, which REPLACES every other containers.conf.
 */
export function containersConfVariable(version: PodmanVersion): ContainersConfVariable {
  return version.major > 4 || (version.major === 4 && version.minor >= 4)
    ? CONTAINERS_CONF_OVERRIDE
    : CONTAINERS_CONF;
}
