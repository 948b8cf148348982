/**
 * What main leaves for post. Saved again after every step that creates something, so a main that fails half-way
 * still tells post exactly what to stop and remove.
 */
import type { Host } from '../../core/host.js';
import { State } from './constants.js';
import type { ProcessIdentity } from './process-group.js';

export interface CacheState {
  /**
   * The path handed to the cache library, below the stage dir; saving must use the very same string (it is
   * hashed into the version).
   */
  path: string;
  /** Where the service keeps the cache mounts (below its private TMPDIR) between restore and save. */
  live: string;
  /** `<cache-key>-<os>-<arch>-`: restored by prefix, saved with a fingerprint appended. */
  keyPrefix: string;
  /** The key of the entry restored, if any. */
  matchedKey?: string;
  /** Fingerprint of the directory right after restore; post saves only when it changed. */
  fingerprint: string;
}

/** What both modes leave: a long-running child serving a socket, and the paths to remove. */
interface ServingState {
  /** Where tracked children register themselves (tracked.ts); recorded before the first spawn. */
  registry: string;
  /** The socket CONTAINER_HOST points at. */
  socket: string;
  /** A socket path the user chose lives outside our dirs and is removed on its own. */
  socketOutsideDirs: boolean;
  /**
   * A chosen socket path is claimed with a symlink to this (socket-path.ts), recorded before the claim is made;
   * `socketClaimed` once it was. Until then the path is post's to remove only while it is still that symlink:
   * the claim may have failed because the path is another job's socket.
   */
  socketClaim?: string;
  socketClaimed?: boolean;
  /**
   * fileIdentity of the chosen socket once it answered: from then on post removes the path only while it is that
   * socket (or still the claim). Post may run again after it freed the path, when another job may have taken it.
   */
  socketIdentity?: string;
  /**
   * The topmost dir main made for a socket path the user chose; post removes it (and those below it on the way
   * to the socket) only while empty: anything else put there later is not ours.
   */
  socketDirCreated?: string;
  /** stdout/stderr of the child serving the socket (the service or the ssh tunnel). */
  logFile: string;
  /** Dirs post removes after stopping the child (unmounting anything podman left mounted below them). */
  removeDirs: string[];
  /** Set when main finished: the socket answered and every variable was exported. */
  ready: boolean;
}

export interface LocalState extends ServingState {
  mode: 'local';
  tmpdir: string;
  service?: ProcessIdentity;
  /** Epoch ms just before the service was started: containers created since may be this job's. */
  serviceStartedMs?: number;
  /**
   * The token the service annotates every container it creates with (container-mark.ts), when it could be given
   * one: post finds the job's exited and never-started containers in the shared store by it.
   */
  containerMark?: string;
  /**
   * The service's podman global flags and containers.conf variable (local-service.ts serviceOptions): with them
   * post's own podman removes the job's containers when the service died during the job.
   */
  serviceOptions?: { args: string[]; env: Record<string, string> };
  /** Podman's own containers in a private storage die with it; shared storage is left alone. */
  isolatedStorage: boolean;
  /**
   * Rootless without XDG_RUNTIME_DIR: the runtime dir (a scratch dir) main gave its podman calls and the
   * service, post's too; post stops the pause process podman started for it.
   */
  runtimeDir?: string;
  /** With cache-mounts: the stable dir restores and saves go through, under its lock (cache-mounts.ts). */
  cacheStage?: string;
  cache?: CacheState;
}

/** ssh mode: a tunnel (OpenSSH, with a private known_hosts) from the local socket to the remote service. */
export interface SshState extends ServingState {
  mode: 'ssh';
  tunnel?: ProcessIdentity;
}

export type RunState = LocalState | SshState;

export function saveRunState(host: Host, state: RunState): void {
  host.saveState(State.run, JSON.stringify(state));
}

export function loadRunState(host: Host): RunState | undefined {
  const raw = host.getState(State.run);
  if (!raw) return undefined;
  try {
    const parsed = JSON.parse(raw) as RunState;
    return parsed.mode === 'local' || parsed.mode === 'ssh' ? parsed : undefined;
  } catch {
    return undefined;
  }
}
