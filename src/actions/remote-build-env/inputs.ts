import {
  InputError,
  readBoolean,
  readDuration,
  readEnum,
  readString,
  type InputSource,
} from '../../core/inputs.js';

export const MODES = ['local', 'ssh'] as const;

export interface RemoteBuildInputs {
  mode: (typeof MODES)[number];
  isolateStorage: boolean;
  containersConf?: string;
  startupTimeoutMs: number;
  exportDockerHost: boolean;
  host?: string;
  sshKey?: string;
  knownHosts?: string;
  insecureHostKey: boolean;
  cacheMounts: boolean;
  cacheKey: string;
}

export function readInputs(src: InputSource): RemoteBuildInputs {
  const mode = readEnum(src, 'mode', MODES, 'local');
  const host = readString(src, 'host');
  const sshKey = readString(src, 'ssh-key');
  if (sshKey && !host)
    throw new InputError('ssh-key', 'was given without `host`; set `host: ssh://user@host/path`.');
  if (mode === 'ssh' && !host) throw new InputError('host', 'is required when `mode: ssh`.');
  return {
    mode,
    isolateStorage: readBoolean(src, 'isolate-storage', false),
    containersConf: readString(src, 'containers-conf'),
    startupTimeoutMs: readDuration(src, 'startup-timeout', 30_000)!,
    exportDockerHost: readBoolean(src, 'export-docker-host', false),
    host,
    sshKey,
    knownHosts: readString(src, 'known-hosts'),
    insecureHostKey: readBoolean(src, 'insecure-host-key', false),
    cacheMounts: readBoolean(src, 'cache-mounts', false),
    cacheKey: readString(src, 'cache-key') ?? 'podman-cache-mounts',
  };
}
