import { accessSync, constants, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { cacheKeyPrefix, readCacheKeyInput } from '../../core/cache-key.js';
import {
  InputError,
  readBoolean,
  readDuration,
  readEnum,
  readList,
  readString,
  type InputSource,
} from '../../core/inputs.js';
import { errorMessage } from '../../core/run.js';
import { saveKey } from './cache-mounts.js';
import { Inputs } from './constants.js';
import { socketPathProblem } from './socket-path.js';

export const MODES = ['local', 'ssh'] as const;

/** A parsed `ssh://user@host[:port]/path/to/podman.sock`. */
export interface SshTarget {
  /** The URL with every part explicit (`ssh://user@host:22/…`, IPv6 in brackets), for messages. */
  url: string;
  user: string;
  /** As ssh and known_hosts take it: an IPv6 address without its URL brackets. */
  hostname: string;
  port: number;
  socketPath: string;
}

export interface LocalOptions {
  mode: 'local';
  /** An explicit socket path; by default one is made in a job temp dir. */
  socket?: string;
  isolateStorage: boolean;
  containersConf?: string;
  startupTimeoutMs: number;
  exportDockerHost: boolean;
  cacheMounts: boolean;
  cacheKey: string;
  restoreKeys: string[];
}

export interface SshOptions {
  mode: 'ssh';
  target: SshTarget;
  /** The local end of the tunnel; by default one is made in a job temp dir. */
  socket?: string;
  sshKey: string;
  /** undefined only with insecureHostKey. */
  knownHosts?: string;
  insecureHostKey: boolean;
  startupTimeoutMs: number;
}

export type RemoteBuildInputs = LocalOptions | SshOptions;

/** Names ssh, `-l` and known_hosts take literally: no option-like dash, no %-tokens, no shell or config syntax. */
const SAFE_USER = /^[\w.@+][\w.@+-]*$/;
const SAFE_HOSTNAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;
const IPV6_IN_URL = /^\[([0-9A-Fa-f:.]+)\]$/;
// eslint-disable-next-line no-control-regex -- control characters are what it looks for
export const CONTROL_CHARACTER = /[\x00-\x1f\x7f]/;

export function parseSshHost(value: string): SshTarget {
  // Escaped when it holds control characters, so a NUL or a newline cannot garble the log line.
  const shown = CONTROL_CHARACTER.test(value) ? JSON.stringify(value) : `'${value}'`;
  const fail = (why: string) =>
    new InputError(Inputs.host, `${why}; expected ssh://user@host[:port]/path/to/podman.sock, got ${shown}.`);
  // The URL parser would drop leading and trailing ones silently and percent-encode the rest.
  if (CONTROL_CHARACTER.test(value)) throw fail('holds a control character (a NUL byte, a newline, ...)');
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw fail('is not a URL');
  }
  const decode = (part: string, what: string): string => {
    try {
      return decodeURIComponent(part);
    } catch {
      throw fail(`has a ${what} with a '%' that starts no valid escape (write a literal % as %25)`);
    }
  };
  if (url.protocol !== 'ssh:') throw fail(`uses ${url.protocol.replace(/:$/, '')}:// instead of ssh://`);
  if (!url.username) throw fail('names no user');
  if (url.password) throw fail('must not hold a password (use `ssh-key`)');
  if (!url.hostname) throw fail('names no host');
  const socketPath = decode(url.pathname, 'socket path');
  if (socketPath === '' || socketPath === '/') throw fail('names no socket path on the remote host');
  if (CONTROL_CHARACTER.test(socketPath)) throw fail('has a socket path with an escaped control character');
  if (url.search || url.hash) throw fail('must not have a query or fragment');
  const user = decode(url.username, 'user name');
  if (!SAFE_USER.test(user)) throw fail(`has a user name ssh would not take literally ('${user}')`);
  // WHATWG URL keeps the brackets of an IPv6 host in `hostname`; ssh and known_hosts want the bare address.
  const ipv6 = IPV6_IN_URL.exec(url.hostname);
  const hostname = ipv6 ? ipv6[1]! : url.hostname;
  if (!ipv6 && !SAFE_HOSTNAME.test(hostname)) throw fail(`has a host name ssh would not take literally`);
  // ssh -L separates its fields with ':'.
  if (socketPath.includes(':')) throw fail('has a socket path with a colon, which ssh cannot forward');
  const port = url.port ? Number(url.port) : 22;
  if (port < 1) throw fail('has port 0');
  return {
    url: `ssh://${url.username}@${ipv6 ? `[${hostname}]` : hostname}:${port}${url.pathname}`,
    user,
    hostname,
    port,
    socketPath,
  };
}

function readContainersConf(src: InputSource): string | undefined {
  const given = readString(src, Inputs.containersConf);
  if (given === undefined) return undefined;
  const path = resolve(given);
  try {
    if (!statSync(path).isFile()) throw new Error('not a regular file');
    accessSync(path, constants.R_OK);
  } catch (error) {
    throw new InputError(
      Inputs.containersConf,
      `cannot read '${given}' (${errorMessage(error)}); give the path of a readable containers.conf.`,
    );
  }
  return path;
}

function readSocket(src: InputSource): string | undefined {
  const given = readString(src, Inputs.socket);
  if (given === undefined) return undefined;
  const socket = resolve(given);
  const problem = socketPathProblem(socket, process.platform);
  if (problem) throw new InputError(Inputs.socket, `${problem}; choose a shorter path.`);
  return socket;
}

/** Saved keys are `<cache-key>-<os>-<arch>-<fingerprint>` (cache-mounts.ts): the longest is a full one. */
function readCacheKey(src: InputSource): string {
  return readCacheKeyInput(src, Inputs.cacheKey, 'podman-cache-mounts', (key) =>
    saveKey(cacheKeyPrefix({ prefix: key }), 'f'.repeat(64)),
  );
}

/** Inputs that only one mode uses must not be set in the other: a silently ignored setting hides a mistake. */
function rejectForMode(
  src: InputSource,
  mode: string,
  names: readonly string[],
  booleans: readonly string[],
) {
  for (const name of names) {
    if (readString(src, name) !== undefined) {
      throw new InputError(name, `is not used with \`mode: ${mode}\`; remove it or change \`mode\`.`);
    }
  }
  for (const name of booleans) {
    if (readBoolean(src, name, false)) {
      throw new InputError(name, `is not used with \`mode: ${mode}\`; remove it or change \`mode\`.`);
    }
  }
}

export function readInputs(src: InputSource): RemoteBuildInputs {
  const mode = readEnum(src, Inputs.mode, MODES, 'local');
  const startupTimeoutMs = readDuration(src, Inputs.startupTimeout, 30_000);
  if (startupTimeoutMs <= 0) throw new InputError(Inputs.startupTimeout, 'must be longer than zero.');
  const host = readString(src, Inputs.host);
  if (readString(src, Inputs.sshKey) !== undefined && host === undefined) {
    throw new InputError(Inputs.sshKey, 'was given without `host`; set `host: ssh://user@host/path`.');
  }

  if (mode === 'ssh') {
    rejectForMode(
      src,
      'ssh',
      [Inputs.containersConf, Inputs.restoreKeys],
      [Inputs.isolateStorage, Inputs.exportDockerHost, Inputs.cacheMounts],
    );
    if (host === undefined) throw new InputError(Inputs.host, 'is required when `mode: ssh`.');
    const target = parseSshHost(host);
    const sshKey = readString(src, Inputs.sshKey);
    if (sshKey === undefined) throw new InputError(Inputs.sshKey, 'is required when `mode: ssh`.');
    const insecureHostKey = readBoolean(src, Inputs.insecureHostKey, false);
    const knownHosts = readString(src, Inputs.knownHosts);
    if (knownHosts === undefined && !insecureHostKey) {
      throw new InputError(
        Inputs.knownHosts,
        'is required with `mode: ssh` (e.g. the output of `ssh-keyscan -p PORT HOST`), unless `insecure-host-key: true`.',
      );
    }
    return { mode, target, socket: readSocket(src), sshKey, knownHosts, insecureHostKey, startupTimeoutMs };
  }

  rejectForMode(src, 'local', [Inputs.host, Inputs.knownHosts], [Inputs.insecureHostKey]);
  const socket = readSocket(src);
  return {
    mode,
    socket,
    isolateStorage: readBoolean(src, Inputs.isolateStorage, false),
    containersConf: readContainersConf(src),
    startupTimeoutMs,
    exportDockerHost: readBoolean(src, Inputs.exportDockerHost, false),
    cacheMounts: readBoolean(src, Inputs.cacheMounts, false),
    cacheKey: readCacheKey(src),
    restoreKeys: readList(src, Inputs.restoreKeys),
  };
}
