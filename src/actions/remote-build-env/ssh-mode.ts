/**
 * Mode `ssh`: this job's podman reaches a remote service through an OpenSSH tunnel that main opens and post
 * closes; CONTAINER_HOST points at the tunnel's local socket.
 *
 * Why a tunnel and not `CONTAINER_HOST=ssh://…`: podman's own ssh client (4.3 and 5.4) trusts host keys from
 * `$HOME/.ssh/known_hosts` only, with no setting to name another file, and appends hosts it has not seen. A stale
 * line there defeats a correct `known-hosts` (key mismatch) and `insecure-host-key` alike, a missing file makes
 * podman 4.3 trust anything, and adding our lines to the user's file means editing it (and losing track of the
 * edit when main is killed). The tunnel runs `ssh -F none` with a private known_hosts, so the trust decision
 * rests on this step's inputs alone and the user's ssh files are neither read nor written. It also takes every
 * URL form OpenSSH takes, where podman 4.3 needs an explicit port and neither 4.3 nor 5.4 connects to an IPv6
 * host (`parse "::1": missing protocol scheme`).
 *
 * The key lives in a private file only until the tunnel has authenticated: later steps never need it.
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { which } from '@actions/io';
import { exec } from '../../core/exec.js';
import type { Host } from '../../core/host.js';
import { InputError } from '../../core/inputs.js';
import { ActionError, errorMessage } from '../../core/run.js';
import { formatDuration, heading, markdownTable } from '../../core/summary.js';
import { scratchDir } from '../../core/workspace.js';
import { waitUntilAnswering } from './answering.js';
import { registeredChild, removeOwnedPaths, showLog, stopChild } from './cleanup.js';
import { Inputs, Outputs } from './constants.js';
import type { SshOptions, SshTarget } from './inputs.js';
import { socketUrl } from './local-service.js';
import type { ServingMode } from './mode.js';
import { claimChosenSocket, claimTarget, planSocket, recordChosenSocket } from './socket-path.js';
import { saveRunState, type SshState } from './state.js';
import { spawnTracked } from './tracked.js';

const KEYGEN_TIMEOUT_MS = 10_000;
const STOP_GRACE_MS = 5000;
/** The registry name of the tunnel (tracked.ts). */
const TUNNEL = 'ssh';
/** A dead link ends the tunnel after about a minute instead of hanging later steps. */
const SERVER_ALIVE_INTERVAL_S = 15;
const SERVER_ALIVE_COUNT = 4;

/** How OpenSSH names a host in known_hosts: a bare name on port 22, else `[name]:port`. */
export function knownHostsName(target: Pick<SshTarget, 'hostname' | 'port'>): string {
  return target.port === 22 ? target.hostname : `[${target.hostname}]:${target.port}`;
}

/**
 * Everything of a private key that could show in a log: each body line (the runner masks per line, and a
 * multi-line secret would otherwise leak line by line), then the whole value, whose mask command itself carries
 * the lines (newlines escaped) and so must come after them. The BEGIN/END armour is not secret.
 */
export function keyMaskValues(key: string): string[] {
  const lines = key
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !/^-----(BEGIN|END) /.test(l));
  return [...lines, key.trim()];
}

/**
 * Why ssh would not take `path` literally, if it would not: it expands %-tokens and ${VAR} in file and socket
 * paths, we quote paths in -o options with ", and -L separates its fields with ':'.
 */
export function sshPathProblem(path: string): string | undefined {
  const bad = /[%$":]/.exec(path);
  return bad ? `holds '${bad[0]}', which ssh would not take literally in a path` : undefined;
}

export interface TunnelFiles {
  key: string;
  /** The private known_hosts; undefined with insecure-host-key. */
  knownHosts?: string;
  /** The local end of the tunnel. */
  socket: string;
}

/**
 * `ssh` arguments for the tunnel. `-F none`: neither ~/.ssh/config nor /etc/ssh/ssh_config can change whom we
 * trust or which key is offered; only this key (no agent), no prompts, and the host key checked against our file.
 */
export function sshTunnelArgs(target: SshTarget, files: TunnelFiles, connectTimeoutMs: number): string[] {
  const trust = files.knownHosts
    ? ['-o', `UserKnownHostsFile="${files.knownHosts}"`, '-o', 'StrictHostKeyChecking=yes']
    : ['-o', 'UserKnownHostsFile=/dev/null', '-o', 'StrictHostKeyChecking=no'];
  const options = [
    'BatchMode=yes',
    'IdentitiesOnly=yes',
    'IdentityAgent=none',
    'GlobalKnownHostsFile=/dev/null',
    'CheckHostIP=no',
    'ExitOnForwardFailure=yes',
    'StreamLocalBindMask=0177',
    // The path holds this run's claim (socket-path.ts), which ssh would otherwise refuse to bind over.
    'StreamLocalBindUnlink=yes',
    `ConnectTimeout=${Math.max(1, Math.ceil(connectTimeoutMs / 1000))}`,
    `ServerAliveInterval=${SERVER_ALIVE_INTERVAL_S}`,
    `ServerAliveCountMax=${SERVER_ALIVE_COUNT}`,
    'LogLevel=ERROR',
  ];
  return [
    '-F',
    'none',
    '-N',
    '-T',
    '-i',
    files.key,
    ...trust,
    ...options.flatMap((o) => ['-o', o]),
    '-p',
    String(target.port),
    '-l',
    target.user,
    '-L',
    `${files.socket}:${target.socketPath}`,
    '--',
    target.hostname,
  ];
}

async function checkKnownHostsCover(file: string, target: SshTarget): Promise<void> {
  const name = knownHostsName(target);
  const r = await exec('ssh-keygen', ['-F', name, '-f', file], {
    timeoutMs: KEYGEN_TIMEOUT_MS,
    allowFailure: true,
  });
  if (r.exitCode !== 0) {
    const scan =
      target.port === 22
        ? `ssh-keyscan ${target.hostname}`
        : `ssh-keyscan -p ${target.port} ${target.hostname}`;
    throw new InputError(
      Inputs.knownHosts,
      `has no entry for ${name}; add the host's keys (e.g. the output of \`${scan}\`).`,
    );
  }
}

/** The tunnel's files; fails when one of their paths is something ssh would not take literally. */
function tunnelFiles(scratch: string, socket: string, inputs: SshOptions): TunnelFiles {
  const socketProblem = sshPathProblem(socket);
  if (socketProblem && inputs.socket !== undefined) {
    throw new InputError(Inputs.socket, `${socketProblem}; choose another path.`);
  }
  const scratchProblem = socketProblem ?? sshPathProblem(scratch);
  if (scratchProblem) {
    throw new ActionError(`the temp dir ${scratch} ${scratchProblem}; give RUNNER_TEMP a plainer path.`);
  }
  return {
    key: join(scratch, 'id'),
    knownHosts: inputs.knownHosts === undefined ? undefined : join(scratch, 'known_hosts'),
    socket,
  };
}

async function connectSsh(host: Host, inputs: SshOptions, interrupted?: AbortSignal): Promise<void> {
  for (const value of keyMaskValues(inputs.sshKey)) host.setSecret(value);
  if (process.platform === 'win32') throw new InputError(Inputs.mode, '`ssh` needs a Linux or macOS runner.');
  if (!(await which('ssh')))
    throw new ActionError('ssh (openssh-client) is not installed (not found on PATH).');
  if (inputs.knownHosts !== undefined && !(await which('ssh-keygen')))
    throw new ActionError('ssh-keygen (openssh-client) is needed to check `known-hosts`.');
  const target = inputs.target;
  const scratch = await scratchDir(host);
  const placed = await planSocket(inputs.socket, scratch);
  const files = tunnelFiles(scratch, placed.socket, inputs);
  const state: SshState = {
    mode: 'ssh',
    registry: join(scratch, 'registry'),
    socket: placed.socket,
    socketOutsideDirs: placed.outside,
    ...(placed.outside ? { socketClaim: claimTarget(scratch) } : {}),
    logFile: join(scratch, 'ssh.log'),
    removeDirs: [scratch],
    ...(placed.createDir ? { socketDirCreated: placed.createDir } : {}),
    ready: false,
  };
  saveRunState(host, state);
  await mkdir(state.registry, { mode: 0o700 });
  // Else another job's tunnel bound there while this one connects would answer this job's readiness check.
  await claimChosenSocket(host, state);
  await writeFile(files.key, `${inputs.sshKey.trim()}\n`, { mode: 0o600, flag: 'wx' });
  if (files.knownHosts && inputs.knownHosts !== undefined) {
    await writeFile(files.knownHosts, `${inputs.knownHosts.trim()}\n`, { mode: 0o600 });
    await checkKnownHostsCover(files.knownHosts, target);
  } else {
    host.warning(
      `insecure-host-key: the host key of ${knownHostsName(target)} is not checked; whatever answers there is trusted.`,
    );
  }
  interrupted?.throwIfAborted();

  host.info(`Connecting to ${target.url} as ${target.user} (tunnel at ${placed.socket}) ...`);
  const started = Date.now();
  const tunnel = await spawnTracked(
    state.registry,
    TUNNEL,
    'ssh',
    sshTunnelArgs(target, files, inputs.startupTimeoutMs),
    { env: process.env, logFile: state.logFile },
  );
  state.tunnel = tunnel.identity;
  saveRunState(host, state);
  let version: string;
  try {
    version = await waitUntilAnswering({
      what: 'ssh',
      socket: placed.socket,
      child: tunnel,
      logFile: state.logFile,
      timeoutMs: inputs.startupTimeoutMs,
      interrupted,
      advice:
        `is podman's API service listening on ${target.socketPath} on the remote host (e.g. ` +
        '`systemctl --user enable --now podman.socket`)? On a slow link, raise `startup-timeout`.',
    });
  } catch (error) {
    if (interrupted?.aborted) throw error;
    throw new ActionError(`cannot reach the podman service at ${target.url}: ${errorMessage(error)}`);
  }
  const readyMs = Date.now() - started;
  await recordChosenSocket(host, state);
  // The tunnel has authenticated and never reconnects: no later step needs the key, so it leaves the disk now.
  await rm(files.key, { force: true });
  host.info(`Remote podman ${version} answers through the tunnel (after ${formatDuration(readyMs)}).`);

  const url = socketUrl(placed.socket);
  host.exportVariable('CONTAINER_HOST', url);
  host.setOutput(Outputs.socket, placed.socket);
  host.setOutput(Outputs.containerHost, url);
  host.setOutput(Outputs.cacheHit, 'false');
  state.ready = true;
  saveRunState(host, state);
  await host.appendSummary(
    heading('remote-build-env') +
      markdownTable(
        ['Setting', 'Value'],
        [
          ['Remote', `${target.url}, podman ${version}, over an ssh tunnel (pid ${tunnel.identity.pid})`],
          ['CONTAINER_HOST', url],
          [
            'Host key',
            files.knownHosts
              ? 'checked against known-hosts (a private known_hosts; ~/.ssh is not used)'
              : 'not checked (insecure-host-key)',
          ],
        ],
      ),
  );
}

/** Closes the tunnel and removes the socket, the key and the private known_hosts. Repeatable. */
async function disconnectSsh(host: Host, state: SshState): Promise<void> {
  const tunnel = await registeredChild(state, TUNNEL, state.tunnel);
  const outcome = await stopChild(host, 'ssh tunnel', tunnel, STOP_GRACE_MS);
  let reason: string | undefined;
  if (!state.ready) reason = 'the main step did not finish';
  else if (outcome === 'not-running') reason = 'the tunnel had ended before the post step: connection lost?';
  else if (outcome !== 'terminated') reason = 'ssh ignored SIGTERM';
  await showLog(host, 'ssh log', state.logFile, reason);
  await removeOwnedPaths(host, state);
  host.info('Removed the tunnel socket and the ssh key.');
}

export const sshMode: ServingMode<SshOptions, SshState> = { start: connectSsh, stop: disconnectSsh };
