/**
 * A unix socket path must fit the kernel's `sun_path` buffer including its terminating NUL: 108 bytes on Linux,
 * 104 on macOS and the BSDs. Go's net package (podman) refuses a path that fills the whole buffer, so the usable
 * length is one byte less. A path too long fails late and obscurely ("bind: invalid argument"), so check early.
 */
import { dirname, join } from 'node:path';
import { pathExists } from '../../core/files.js';
import { InputError } from '../../core/inputs.js';
import { Inputs } from './constants.js';

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
  if (await pathExists(given)) {
    throw new InputError(Inputs.socket, `${given} is already in use; choose another path or remove it.`);
  }
  const createDir = await topmostMissingDir(dirname(given));
  return createDir ? { socket: given, outside: true, createDir } : { socket: given, outside: true };
}
