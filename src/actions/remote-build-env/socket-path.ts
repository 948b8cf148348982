/**
 * A unix socket path must fit the kernel's `sun_path` buffer including its terminating NUL: 108 bytes on Linux,
 * 104 on macOS and the BSDs. Go's net package (podman) refuses a path that fills the whole buffer, so the usable
 * length is one byte less. A path too long fails late and obscurely ("bind: invalid argument"), so check early.
 */
import { lstat, mkdir, readlink, symlink } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { basename, dirname, join } from 'node:path';
import { pathExists } from '../../core/files.js';
import type { Host } from '../../core/host.js';
import { InputError } from '../../core/inputs.js';
import { Inputs } from './constants.js';
import { saveRunState, type RunState } from './state.js';

const SUN_PATH_BYTES: Partial<Record<NodeJS.Platform, number>> = {
  linux: 108,
  darwin: 104,
  freebsd: 104,
  openbsd: 104,
  netbsd: 104,
};

export function maxSocketPathBytes(platform: NodeJS.Platform): number {
  return (SUN_PATH_BYTES[platform] ?? 104) - 1;
}

/** A sentence saying why `path` cannot be a socket path on `platform`, or undefined when it fits. */
export function socketPathProblem(path: string, platform: NodeJS.Platform): string | undefined {
  const bytes = Buffer.byteLength(path, 'utf8');
  const max = maxSocketPathBytes(platform);
  if (bytes <= max) return undefined;
  return `the socket path '${path}' is ${bytes} bytes, but ${platform} allows at most ${max}`;
}

export interface SocketPlan {
  socket: string;
  /** A path the user chose lives outside our dirs and is removed on its own. */
  outside: boolean;
  /** The topmost dir that must be made for it (post removes it again); made only after state records it. */
  createDir?: string;
}

async function topmostMissingDir(dir: string): Promise<string | undefined> {
  let missing: string | undefined;
  for (let d = dir; !(await pathExists(d)); d = dirname(d)) missing = d;
  return missing;
}

const CLAIM_NAME = 'socket-claim';
const PROBE_TIMEOUT_MS = 2000;

/** Whether something listens on the unix socket at `path`: false only when the kernel says no one does. */
function listening(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ path });
    socket.setTimeout(PROBE_TIMEOUT_MS, () => {
      socket.destroy();
      resolve(true);
    });
    socket.on('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code !== 'ECONNREFUSED'));
  });
}

/**
 * The refusal of a chosen path something is at. What a run left that ended without its post step (a runner killed
 * with its job) is told apart, as it is no job's: a claim into a scratch dir that is gone (the runner empties its
 * temp dir before the next job), or a socket no one listens on. Only told: which job may remove it is the user's call
 * (two jobs removing it at once could each take the path from the other).
 */
async function socketInUse(path: string): Promise<InputError> {
  const target = await readlink(path).catch(() => undefined);
  let left: string | undefined;
  if (target !== undefined && basename(target) === CLAIM_NAME && !(await pathExists(dirname(target)))) {
    left = `a claim pointing into ${dirname(target)}, which is gone`;
  } else if (target === undefined && (await lstat(path).catch(() => undefined))?.isSocket()) {
    if (!(await listening(path))) left = 'a socket no one listens on';
  }
  if (left) {
    return new InputError(
      Inputs.socket,
      `${path} is left from a run that ended without its post step (${left}); remove it, or choose another path.`,
    );
  }
  return new InputError(Inputs.socket, `${path} is already in use; choose another path or remove it.`);
}

/** What the claim of a chosen socket path points at: a name below the run's scratch dir, so unique to the run. */
export function claimTarget(scratch: string): string {
  return join(scratch, CLAIM_NAME);
}

/**
 * Takes a chosen socket path for this run: a symlink to `target` (claimTarget), made only if nothing is there,
 * which the service replaces with its socket (podman unlinks whatever is at its listen path before it binds).
 * The check in planSocket alone leaves a window up to the bind, a cache restore long: two jobs on one host given
 * the same path would both pass it, and the later service would take the socket over from the earlier one, whose
 * later steps would then build on the other job's service and whose post would remove the other's socket. A
 * symlink, not a file: it can be told apart from anyone else's by where it points (isClaim), on any filesystem.
 */
export async function claimSocket(path: string, target: string): Promise<void> {
  try {
    await symlink(target, path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw await socketInUse(path);
    throw error;
  }
}

/** Why a path cannot be made there: another user's dir (a rootless runner), a read-only one, a file on the way. */
const UNWRITABLE = new Set(['EACCES', 'EPERM', 'EROFS', 'ENOTDIR', 'ENOENT']);

/**
 * Makes the dirs planSocket found missing and claims the chosen socket path main recorded in `state` (none for a
 * path in our own dirs), and records that it did: from then on post removes the path while the claim or the
 * socket that answered is there (the service's or tunnel's socket replaces the claim).
 */
export async function claimChosenSocket(host: Host, state: RunState): Promise<void> {
  if (!state.socketClaim) return;
  try {
    if (state.socketDirCreated) await mkdir(dirname(state.socket), { recursive: true, mode: 0o700 });
    await claimSocket(state.socket, state.socketClaim);
  } catch (error) {
    // Node's message would name the claim's target in our scratch dir, not the path the user chose.
    const code = (error as NodeJS.ErrnoException).code;
    if (code && UNWRITABLE.has(code)) {
      throw new InputError(
        Inputs.socket,
        `cannot create ${state.socket} (${code}); choose a path in a dir this user (uid ${process.getuid?.()}) can write.`,
      );
    }
    throw error;
  }
  state.socketClaimed = true;
  saveRunState(host, state);
}

/** Records which socket answered at a chosen path (see socketIdentity in state.ts); call once it answered. */
export async function recordChosenSocket(host: Host, state: RunState): Promise<void> {
  if (!state.socketClaim) return;
  const identity = await fileIdentity(state.socket);
  if (identity) state.socketIdentity = identity;
  saveRunState(host, state);
}

/** Whether `path` is still this run's claim: what a main killed right after claiming, before recording it, left. */
export async function isClaim(path: string, target: string): Promise<boolean> {
  return (await readlink(path).catch(() => undefined)) === target;
}

/**
 * Which file is at `path` now (device, inode and change time: an inode number alone is soon reused once the file
 * is gone), or undefined when nothing is. Recorded for the socket that answered, so post can tell it from a
 * socket another job made at the same path after this run's post freed it.
 */
export async function fileIdentity(path: string): Promise<string | undefined> {
  const info = await lstat(path, { bigint: true }).catch(() => undefined);
  return info && `${info.dev}:${info.ino}:${info.ctimeNs}`;
}

/** Where CONTAINER_HOST will point: the `socket` input, or `<scratch>/podman.sock`. Creates nothing. */
export async function planSocket(given: string | undefined, scratch: string): Promise<SocketPlan> {
  if (given === undefined) {
    const socket = join(scratch, 'podman.sock');
    const problem = socketPathProblem(socket, process.platform);
    if (problem) {
      throw new InputError(
        Inputs.socket,
        `${problem} (RUNNER_TEMP is long); set it to a shorter path such as /tmp/podman-build.sock.`,
      );
    }
    return { socket, outside: false };
  }
  if (await pathExists(given)) throw await socketInUse(given);
  const createDir = await topmostMissingDir(dirname(given));
  return createDir ? { socket: given, outside: true, createDir } : { socket: given, outside: true };
}
