/**
 * What main leaves for post. Saved again after every step that creates something, so a main that fails half-way
 * still tells post exactly what to stop and remove.
 */
import type { Host } from '../../core/host.js';
import type { ProcessIdentity } from './process-group.js';

const STATE_KEY = 'remote-build-env';

export interface CacheState {
  /** The path handed to the cache library; saving must use the very same string (it is hashed into the version). */
  path: string;
  /** `<cache-key>-<os>-<arch>-`: restored by prefix, saved with a fingerprint appended. */
  keyPrefix: string;
  /** The key of the entry restored, if any. */
  matchedKey?: string;
  /** Fingerprint of the directory right after restore; post saves only when it changed. */
  fingerprint: string;
}

export interface LocalState {
  mode: 'local';
  socket: string;
  /** A socket path the user chose lives outside our dirs and is removed on its own. */
  socketOutsideDirs: boolean;
  logFile: string;
  tmpdir: string;
  /** Dirs post removes after stopping the service (unmounting anything podman left mounted below them). */
  removeDirs: string[];
  service?: ProcessIdentity;
  /** Set when main finished: the service answered and every variable was exported. */
  ready: boolean;
  /** Podman's own containers in a private storage die with it; shared storage is left alone. */
  isolatedStorage: boolean;
  cache?: CacheState;
}

export interface SshState {
  mode: 'ssh';
  /** The private dir holding the key (removed by post). */
  keyDir: string;
  /** known_hosts lines this action appended to the user's file, removed again by post. */
  knownHostsFile?: string;
  addedKnownHosts: string[];
  /** The user had no known_hosts file before; post deletes it again when only our lines were in it. */
  createdKnownHostsFile: boolean;
  ready: boolean;
}

export type RunState = LocalState | SshState;

export function saveRunState(host: Host, state: RunState): void {
  host.saveState(STATE_KEY, JSON.stringify(state));
}

export function loadRunState(host: Host): RunState | undefined {
  const raw = host.getState(STATE_KEY);
  if (!raw) return undefined;
  try {
    const parsed = JSON.parse(raw) as RunState;
    return parsed.mode === 'local' || parsed.mode === 'ssh' ? parsed : undefined;
  } catch {
    return undefined;
  }
}

export function clearRunState(host: Host): void {
  host.saveState(STATE_KEY, '');
}
