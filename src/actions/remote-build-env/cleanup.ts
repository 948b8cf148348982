/** Post's part shared by both modes: stop what serves the socket, show its log when needed, remove our paths. */
import { readFile, rm, rmdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Host } from '../../core/host.js';
import { execAsStorageRoot } from '../../core/podman.js';
import { errorMessage } from '../../core/run.js';
import { removeScratchDirs } from '../../core/workspace.js';
import { unmountUnder } from './mounts.js';
import { stopProcess, stopProcessGroup, type ProcessIdentity, type StopOutcome } from './process-group.js';
import { fileIdentity, isClaim } from './socket-path.js';
import type { RunState } from './state.js';
import { closeRegistry } from './tracked.js';

const REMOVE_TIMEOUT_MS = 60_000;

/**
 * Closes the registry (so nothing main spawned can still start) and returns the identity registered under
 * `name`, else the one main recorded. A main killed between spawning and saving left only the registry entry.
 */
export async function registeredChild(
  state: RunState,
  name: string,
  recorded: ProcessIdentity | undefined,
): Promise<ProcessIdentity | undefined> {
  const registered = await closeRegistry(state.registry);
  return registered.get(name) ?? recorded;
}

const VERDICT: Record<StopOutcome, string> = {
  'not-running': 'was not running any more',
  terminated: 'stopped',
  killed: 'did not stop on SIGTERM and was killed',
  survived: 'survived SIGKILL',
};

/**
 * Stops the child's process group (or, `alone`, the process by itself) and says how that went; `label` like
 * `podman service`.
 */
export async function stopChild(
  host: Host,
  label: string,
  identity: ProcessIdentity | undefined,
  graceMs: number,
  alone = false,
): Promise<StopOutcome> {
  if (!identity) return 'not-running';
  const outcome = await (alone ? stopProcess : stopProcessGroup)(identity, graceMs);
  const say = outcome === 'survived' ? host.warning.bind(host) : host.info.bind(host);
  say(`${label} (pid ${identity.pid}) ${VERDICT[outcome]}.`);
  return outcome;
}

/**
 * The query of a request line in the service's access log (`"POST /v4.3.1/libpod/build?buildargs=... HTTP/1.1"`).
 * It carries build args, which hold tokens in many workflows, percent- and JSON-escaped: a form the runner's
 * masking of the secret's plain value does not catch. The method and path say which call it was.
 */
const REQUEST_QUERY = /("[A-Z]+ [^"?\s]*)\?\S*( HTTP\/[\d.]+")/g;

/** Prints the log in a folded group when `reason` says something went wrong, else one line about it. */
export async function showLog(host: Host, title: string, logFile: string, reason: string | undefined) {
  let log = '';
  try {
    log = await readFile(logFile, 'utf8');
  } catch {
    return; // main failed before the log existed
  }
  if (!reason) {
    host.info(`${title}: ${log.split('\n').length - 1} lines, not shown (nothing went wrong).`);
    return;
  }
  await host.group(`${title} (${reason})`, async () => {
    for (const line of log.trimEnd().split('\n')) host.info(line.replace(REQUEST_QUERY, '$1?…$2'));
  });
}

/** Removes `dir`, unmounting what podman left mounted below it first. */
export async function removeTree(host: Host, dir: string): Promise<void> {
  const stuck = await unmountUnder(dir);
  if (stuck.length) host.warning(`could not unmount ${stuck.join(', ')}`);
  try {
    await rm(dir, { recursive: true, force: true });
  } catch {
    // Node's rm goes by whole paths, so a tree deeper than PATH_MAX (a build can make one in a cache mount) fails
    // with ENAMETOOLONG; rm(1) goes by descriptors. Rootless podman writes image layers and what builds leave in
    // cache mounts as sub-uids this user cannot delete outside its user namespace, and leaves a private
    // store's overlay mounted in that namespace.
    if (process.getuid?.() !== 0) {
      const stuckInside = await unmountUnder(dir, undefined, true);
      if (stuckInside.length) host.warning(`could not unmount ${stuckInside.join(', ')}`);
    }
    await execAsStorageRoot('rm', ['-rf', '--', dir], { timeoutMs: REMOVE_TIMEOUT_MS });
  }
}

/**
 * Removes the dirs main made for a chosen socket path, from the socket's dir up to `top`, each only if empty:
 * a file someone put there after main made it is theirs, so it stays, and so do the dirs holding it.
 */
async function removeSocketDirs(host: Host, socket: string, top: string): Promise<void> {
  for (let dir = dirname(socket); ; dir = dirname(dir)) {
    try {
      await rmdir(dir);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOTEMPTY' || code === 'EEXIST') {
        host.warning(`left ${dir} (made for the socket): it holds files this run did not put there.`);
        return;
      }
      if (code !== 'ENOENT') throw error;
    }
    if (dir === top || dir === dirname(dir)) return;
  }
}

/**
 * Whether the chosen socket path is this run's: not when its claim failed (or never came), as it may be another's,
 * nor once the socket that answered is gone from it (an earlier post removed it: the path is free for others).
 */
async function ownsSocketPath(state: RunState): Promise<boolean> {
  if (!state.socketClaim) return true;
  if (await isClaim(state.socket, state.socketClaim)) return true;
  if (!state.socketClaimed) return false;
  if (state.socketIdentity) return (await fileIdentity(state.socket)) === state.socketIdentity;
  // Main ended between the claim and the answer: whatever serves there is this run's service or tunnel.
  return true;
}

/** Removes the socket and every dir main made. Best-effort: one failure does not keep the rest. */
export async function removeOwnedPaths(host: Host, state: RunState): Promise<void> {
  if (state.socketOutsideDirs && (await ownsSocketPath(state))) await rm(state.socket, { force: true });
  if (state.socketDirCreated) {
    const top = state.socketDirCreated;
    await removeSocketDirs(host, state.socket, top).catch((error) =>
      host.warning(`could not remove ${top}: ${errorMessage(error)}`),
    );
  }
  for (const dir of state.removeDirs) {
    await removeTree(host, dir).catch((error) =>
      host.warning(`could not remove ${dir}: ${errorMessage(error)}`),
    );
  }
  // Also covers a scratch dir main made before it could record it in its own state.
  await removeScratchDirs(host).catch((error) =>
    host.warning(`could not remove scratch dirs: ${errorMessage(error)}`),
  );
}
