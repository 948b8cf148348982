/** Mode `local`: a podman service of this job's own, started in main and stopped in post. */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { exec, which } from '../../core/exec.js';
import { pathExists } from '../../core/files.js';
import type { Host } from '../../core/host.js';
import { InputError } from '../../core/inputs.js';
import { ActionError, errorMessage } from '../../core/run.js';
import { formatDuration, heading, markdownTable } from '../../core/summary.js';
import { removeScratchDirs, scratchDir, stableDir } from '../../core/workspace.js';
import type { LocalOptions } from './inputs.js';
import { socketUrl, spawnService, waitUntilAnswering, type ServicePlan } from './local-service.js';
import { unmountUnder } from './mounts.js';
import { cacheMountDir, restoreCacheMounts, saveCacheMounts } from './cache-mounts.js';
import { containersConfVariable, podmanClientVersion, podmanRemote } from './podman.js';
import { isRunning, stopProcessGroup, type StopOutcome } from './process-group.js';
import { socketPathProblem } from './socket-path.js';
import { saveRunState, type LocalState } from './state.js';

const VERSION_TIMEOUT_MS = 15_000;
const STOP_GRACE_MS = 10_000;
const REMOVE_CONTAINERS_TIMEOUT_MS = 60_000;

/**
 * The cache-mount dir must have the same path in every run (the cache library versions entries by path), so
 * with `cache-mounts` the service's TMPDIR is a stable dir named after the cache key.
 */
async function serviceTmpdir(
  inputs: LocalOptions,
  scratch: string,
): Promise<{ tmpdir: string; stable: boolean }> {
  if (!inputs.cacheMounts) {
    const tmpdir = join(scratch, 'tmp');
    await mkdir(tmpdir, { mode: 0o700 });
    return { tmpdir, stable: false };
  }
  const id = createHash('sha256').update(inputs.cacheKey).digest('hex').slice(0, 8);
  const tmpdir = await stableDir(`rbe-${id}`);
  // Whatever a crashed earlier run left here must not mix with what is restored from the cache.
  await rm(tmpdir, { recursive: true, force: true });
  await mkdir(tmpdir, { recursive: true, mode: 0o700 });
  return { tmpdir, stable: true };
}

export async function startLocalService(host: Host, inputs: LocalOptions): Promise<void> {
  if (process.platform !== 'linux') {
    throw new ActionError(
      '`mode: local` needs Linux (podman system service runs only there); use `mode: ssh` against a Linux host or podman machine.',
    );
  }
  if (!(await which('podman'))) throw new ActionError('podman is not installed (not found on PATH).');
  const version = await podmanClientVersion(VERSION_TIMEOUT_MS);
  const scratch = await scratchDir(host);
  const socket = inputs.socket ?? join(scratch, 'podman.sock');
  if (inputs.socket === undefined) {
    const problem = socketPathProblem(socket, process.platform);
    if (problem) {
      throw new InputError(
        'socket',
        `${problem} (RUNNER_TEMP is long); set it to a shorter path such as /tmp/podman-build.sock.`,
      );
    }
  } else if (await pathExists(socket)) {
    throw new ActionError(
      `the socket path ${socket} is already in use; choose another \`socket\` or remove it.`,
    );
  }
  // The first dir mkdir had to create for a user-chosen socket, if any: post removes it again.
  const socketDir =
    inputs.socket === undefined ? undefined : await mkdir(dirname(socket), { recursive: true, mode: 0o700 });
  const { tmpdir, stable } = await serviceTmpdir(inputs, scratch);
  const cacheDir = cacheMountDir(tmpdir, version);
  const plan: ServicePlan = { socket, tmpdir, logFile: join(scratch, 'service.log') };
  if (inputs.isolateStorage) {
    const base = join(scratch, 'storage');
    plan.storage = { root: join(base, 'root'), runroot: join(base, 'run'), libpodTmp: join(base, 'libpod') };
  }
  if (inputs.containersConf) {
    const variable = containersConfVariable(version);
    if (variable === 'CONTAINERS_CONF' && process.env.CONTAINERS_CONF) {
      host.warning(
        `podman ${version.text} has no CONTAINERS_CONF_OVERRIDE: the service reads only ${inputs.containersConf}, ` +
          `not CONTAINERS_CONF=${process.env.CONTAINERS_CONF}.`,
      );
    }
    plan.containersConf = { path: inputs.containersConf, variable };
  }
  const state: LocalState = {
    mode: 'local',
    socket,
    socketOutsideDirs: inputs.socket !== undefined,
    logFile: plan.logFile,
    tmpdir,
    removeDirs: [scratch, ...(stable ? [tmpdir] : []), ...(socketDir ? [socketDir] : [])],
    ready: false,
    isolatedStorage: inputs.isolateStorage,
  };
  saveRunState(host, state);

  host.info(
    `Starting podman ${version.text} service on ${socketUrl(socket)} with TMPDIR=${tmpdir}` +
      `${plan.storage ? `, private storage in ${join(scratch, 'storage')}` : ''}` +
      `${plan.containersConf ? `, ${plan.containersConf.variable}=${plan.containersConf.path}` : ''}.`,
  );
  if (inputs.cacheMounts) {
    state.cache = await host.group('Restore cache mounts', () =>
      restoreCacheMounts(host, cacheDir, inputs.cacheKey, inputs.restoreKeys),
    );
    saveRunState(host, state);
  }

  const started = Date.now();
  const service = await spawnService(plan);
  state.service = service.identity;
  saveRunState(host, state);
  const serverVersion = await waitUntilAnswering(plan, service, inputs.startupTimeoutMs);
  const startupMs = Date.now() - started;
  host.info(`The service (pid ${service.identity.pid}) answered after ${formatDuration(startupMs)}.`);

  const url = socketUrl(socket);
  host.exportVariable('CONTAINER_HOST', url);
  if (inputs.exportDockerHost) host.exportVariable('DOCKER_HOST', url);
  host.setOutput('socket', socket);
  host.setOutput('container-host', url);
  host.setOutput('tmpdir', tmpdir);
  host.setOutput('cache-dir', cacheDir);
  host.setOutput('cache-hit', state.cache?.matchedKey ? 'true' : 'false');
  host.setOutput('cache-matched-key', state.cache?.matchedKey ?? '');
  state.ready = true;
  saveRunState(host, state);
  await host.appendSummary(
    heading('remote-build-env') +
      markdownTable(
        ['Setting', 'Value'],
        [
          [
            'Service',
            `podman ${serverVersion}, pid ${service.identity.pid}, ready in ${formatDuration(startupMs)}`,
          ],
          ['CONTAINER_HOST', url],
          ['Image storage', plan.storage ? 'private to this job' : 'shared (default)'],
          ['Cache mounts', cacheSummary(state, cacheDir)],
        ],
      ),
  );
}

function cacheSummary(state: LocalState, cacheDir: string): string {
  if (!state.cache) return `${cacheDir} (not persisted)`;
  return `${cacheDir}, ${state.cache.matchedKey ? `restored from ${state.cache.matchedKey}` : 'nothing restored'}`;
}

/** The runner does not tell a post step whether the job failed; these are the signs this action can see. */
function serviceLogWorthShowing(state: LocalState, outcome: StopOutcome, log: string): string | undefined {
  if (!state.ready) return 'the main step did not finish';
  if (outcome === 'not-running') return 'the service had exited before the post step';
  if (outcome === 'killed' || outcome === 'survived') return 'the service ignored SIGTERM';
  if (/level=(error|fatal|panic)/.test(log)) return 'the service logged errors';
  if (/" 5\d\d \d+ "/.test(log)) return 'the service answered a request with a server error';
  return undefined;
}

async function showServiceLog(host: Host, state: LocalState, outcome: StopOutcome): Promise<void> {
  let log = '';
  try {
    log = await readFile(state.logFile, 'utf8');
  } catch {
    return; // main failed before the log existed
  }
  const reason = serviceLogWorthShowing(state, outcome, log);
  if (!reason) {
    host.info(`Service log: ${log.split('\n').length - 1} lines, not shown (nothing went wrong).`);
    return;
  }
  await host.group(`podman service log (${reason})`, async () => {
    for (const line of log.trimEnd().split('\n')) host.info(line);
  });
}

/** Stops the service and removes everything main created. Best-effort and repeatable: a second run finds nothing. */
export async function stopLocalService(host: Host, state: LocalState): Promise<void> {
  let outcome: StopOutcome = 'not-running';
  if (state.service) {
    if (state.isolatedStorage && (await isRunning(state.service))) {
      // Containers in a private store would keep its mounts busy and outlive the service; they are ours.
      await podmanRemote(socketUrl(state.socket), ['rm', '--all', '--force', '--time', '5'], {
        timeoutMs: REMOVE_CONTAINERS_TIMEOUT_MS,
        allowFailure: true,
      }).catch((e) => host.warning(`could not remove the service's containers: ${errorMessage(e)}`));
    }
    outcome = await stopProcessGroup(state.service, STOP_GRACE_MS);
    const verdict: Record<StopOutcome, string> = {
      'not-running': 'was not running any more',
      terminated: 'stopped',
      killed: 'did not stop on SIGTERM and was killed',
      survived: 'survived SIGKILL',
    };
    const say = outcome === 'survived' ? host.warning.bind(host) : host.info.bind(host);
    say(`podman service (pid ${state.service.pid}) ${verdict[outcome]}.`);
  }
  // A service that survived SIGKILL may still be writing: saving half-written cache mounts would spread them.
  if (state.cache && outcome !== 'survived') {
    const cache = state.cache;
    await host
      .group('Save cache mounts', () => saveCacheMounts(host, cache))
      .catch((error) => host.warning(`cache mounts not saved: ${errorMessage(error)}`));
  }
  await showServiceLog(host, state, outcome);

  if (state.socketOutsideDirs) await rm(state.socket, { force: true });
  // One dir that cannot be removed must not keep the others (or the key material of a later step) around.
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

async function removeTree(host: Host, dir: string): Promise<void> {
  const stuck = await unmountUnder(dir);
  if (stuck.length) host.warning(`could not unmount ${stuck.join(', ')}`);
  try {
    await rm(dir, { recursive: true, force: true });
  } catch (error) {
    if (process.getuid?.() === 0) throw error;
    // Rootless podman writes image layers as sub-uids this user cannot delete outside its user namespace.
    await exec('podman', ['unshare', 'rm', '-rf', dir], { timeoutMs: REMOVE_CONTAINERS_TIMEOUT_MS });
  }
}
