/**
 * Mode `ssh`: point this job's podman at a remote service over ssh. The key goes into a private file (never on
 * argv, masked in the log) that post deletes.
 *
 * Host keys: podman checks only $HOME/.ssh/known_hosts, and trusts a host it has never seen on first use (it
 * appends the key). So `known-hosts` is enforced in two parts: `ssh-keygen -F` proves the given lines cover this
 * host (else podman would silently trust whatever answers), and the lines are added to the user's known_hosts,
 * where podman refuses a host presenting any other key. Post removes every line this step added.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { exec, which } from '../../core/exec.js';
import type { Host } from '../../core/host.js';
import { InputError } from '../../core/inputs.js';
import { ActionError, errorMessage } from '../../core/run.js';
import { heading, markdownTable } from '../../core/summary.js';
import { removeScratchDirs, scratchDir } from '../../core/workspace.js';
import type { SshOptions, SshTarget } from './inputs.js';
import { podmanRemote } from './podman.js';
import { saveRunState, type SshState } from './state.js';

const KEYGEN_TIMEOUT_MS = 10_000;

/** How OpenSSH and Go's knownhosts name a host in known_hosts: a bare name on port 22, else `[name]:port`. */
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

function knownHostsPath(): string {
  return join(process.env.HOME || homedir(), '.ssh', 'known_hosts');
}

async function readLines(path: string): Promise<string[] | undefined> {
  try {
    return (await readFile(path, 'utf8')).split('\n');
  } catch {
    return undefined;
  }
}

/** Lines present in `after` but not in `before` (as many times as they were added). */
export function addedLines(before: readonly string[], after: readonly string[]): string[] {
  const remaining = new Map<string, number>();
  for (const l of before) remaining.set(l, (remaining.get(l) ?? 0) + 1);
  const added: string[] = [];
  for (const l of after) {
    const n = remaining.get(l) ?? 0;
    if (n > 0) remaining.set(l, n - 1);
    else if (l.trim() !== '') added.push(l);
  }
  return added;
}

/** `before` minus one occurrence of each line in `ours`. */
export function withoutLines(lines: readonly string[], ours: readonly string[]): string[] {
  const toDrop = new Map<string, number>();
  for (const l of ours) toDrop.set(l, (toDrop.get(l) ?? 0) + 1);
  return lines.filter((l) => {
    const n = toDrop.get(l) ?? 0;
    if (n === 0) return true;
    toDrop.set(l, n - 1);
    return false;
  });
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
      'known-hosts',
      `has no entry for ${name}; add the host's keys (e.g. the output of \`${scan}\`).`,
    );
  }
}

export async function connectSsh(host: Host, inputs: SshOptions): Promise<void> {
  for (const value of keyMaskValues(inputs.sshKey)) host.setSecret(value);
  if (!(await which('podman'))) throw new ActionError('podman is not installed (not found on PATH).');
  const keyDir = await scratchDir(host);
  const knownHostsFile = knownHostsPath();
  const state: SshState = {
    mode: 'ssh',
    keyDir,
    knownHostsFile,
    addedKnownHosts: [],
    createdKnownHostsFile: false,
    ready: false,
  };
  saveRunState(host, state);
  const keyFile = join(keyDir, 'id');
  await writeFile(keyFile, `${inputs.sshKey.trim()}\n`, { mode: 0o600, flag: 'wx' });

  const before = await readLines(knownHostsFile);
  if (inputs.knownHosts !== undefined) {
    if (!(await which('ssh-keygen')))
      throw new ActionError('ssh-keygen (openssh-client) is needed to check `known-hosts`.');
    const given = join(keyDir, 'known_hosts');
    await writeFile(given, `${inputs.knownHosts.trim()}\n`, { mode: 0o600 });
    await checkKnownHostsCover(given, inputs.target);
    await mkdir(dirname(knownHostsFile), { recursive: true, mode: 0o700 });
    const current = before ?? [];
    const lines = inputs.knownHosts.split(/\r?\n/).map((l) => l.trim());
    const missing = addedLines(current, lines);
    const body = [...current.filter((l) => l !== ''), ...missing].join('\n');
    await writeFile(knownHostsFile, `${body}\n`, { mode: 0o600 });
  } else {
    host.warning(
      `insecure-host-key: the host key of ${knownHostsName(inputs.target)} is not checked; podman trusts whatever answers.`,
    );
  }

  host.info(`Connecting to ${inputs.target.url} as ${inputs.target.user} ...`);
  try {
    const r = await podmanRemote(inputs.target.url, ['info', '--format', '{{.Version.Version}}'], {
      identity: keyFile,
      timeoutMs: inputs.startupTimeoutMs,
    });
    host.info(`Remote podman ${r.stdout.trim()} answers.`);
  } catch (error) {
    throw new ActionError(`cannot reach the podman service at ${inputs.target.url}: ${errorMessage(error)}`);
  } finally {
    // Lines we wrote and lines podman appended on first use: post takes both out again.
    const after = (await readLines(knownHostsFile)) ?? [];
    state.addedKnownHosts = addedLines(before ?? [], after);
    state.createdKnownHostsFile = before === undefined && after.length > 0;
    saveRunState(host, state);
  }

  host.exportVariable('CONTAINER_HOST', inputs.target.url);
  host.exportVariable('CONTAINER_SSHKEY', keyFile);
  host.setOutput('container-host', inputs.target.url);
  host.setOutput('cache-hit', 'false');
  state.ready = true;
  saveRunState(host, state);
  await host.appendSummary(
    heading('remote-build-env') +
      markdownTable(
        ['Setting', 'Value'],
        [
          ['CONTAINER_HOST', inputs.target.url],
          [
            'Host key',
            inputs.knownHosts !== undefined
              ? 'checked against known-hosts'
              : 'not checked (insecure-host-key)',
          ],
        ],
      ),
  );
}

export async function disconnectSsh(host: Host, state: SshState): Promise<void> {
  await rm(state.keyDir, { recursive: true, force: true });
  await removeScratchDirs(host);
  host.info('Removed the ssh key.');
  if (!state.knownHostsFile || state.addedKnownHosts.length === 0) return;
  const lines = await readLines(state.knownHostsFile);
  if (!lines) return;
  const kept = withoutLines(lines, state.addedKnownHosts);
  if (state.createdKnownHostsFile && kept.every((l) => l.trim() === ''))
    await rm(state.knownHostsFile, { force: true });
  else await writeFile(state.knownHostsFile, `${kept.filter((l) => l !== '').join('\n')}\n`, { mode: 0o600 });
  state.addedKnownHosts = [];
  saveRunState(host, state);
  host.info(`Removed the host key lines this step added to ${state.knownHostsFile}.`);
}
