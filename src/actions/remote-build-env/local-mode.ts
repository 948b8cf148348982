/** Mode `local`: a podman service of this job's own, started in main and stopped in post. */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { which } from '@actions/io';
import type { Host } from '../../core/host.js';
import { InputError } from '../../core/inputs.js';
import { printable } from '../../core/cache-confinement.js';
import { pathExists } from '../../core/files.js';
import {
  CONTAINERS_CONF,
  containersConfVariable,
  execAsStorageRoot,
  podmanVersion,
  unshareStoreBelow,
} from '../../core/podman.js';
import { ActionError, errorMessage } from '../../core/run.js';
import { mapLimit } from '../../core/pool.js';
import { formatDuration, heading, markdownTable } from '../../core/summary.js';
import { scratchDir, stablePath } from '../../core/workspace.js';
import { waitUntilAnswering } from './answering.js';
import { cacheMountDir, clearStage, restoreCacheMounts, saveCacheMounts } from './cache-mounts.js';
import { writeMarkLayer } from './container-mark.js';
import {
  conmonsOf,
  containersMadeBy,
  listIds,
  podsOnlyOurs,
  removeEmptied,
  type JobContainer,
} from './job-containers.js';
import { registeredChild, removeOwnedPaths, showLog, stopChild } from './cleanup.js';
import type { LocalOptions } from './inputs.js';
import { Inputs, Outputs } from './constants.js';
import {
  dockerHost,
  pauseProcess,
  podmanLocal,
  podmanRemote,
  SERVICE,
  serviceOptions,
  socketUrl,
  spawnService,
  type PodmanClient,
  type ServicePlan,
} from './local-service.js';
import type { ServingMode } from './mode.js';
import { isRunning, waitGone, type ProcessIdentity, type StopOutcome } from './process-group.js';
import { claimChosenSocket, claimTarget, planSocket, recordChosenSocket } from './socket-path.js';
import { saveRunState, type LocalState } from './state.js';

const VERSION_TIMEOUT_MS = 15_000;
const STOP_GRACE_MS = 10_000;
const REMOVE_CONTAINERS_TIMEOUT_MS = 60_000;
const REMOVE_CONCURRENCY = 8;
const UNSHARE_TIMEOUT_MS = 15_000;
const MAX_RUNROOT_CHARS = 50;

const rootful = process.getuid?.() === 0;

/**
 * Rootless podman without XDG_RUNTIME_DIR (a runner service outside a login session) makes its runtime dir, and
 * the pause process holding its user namespace, below $TMPDIR: the service's private one, so a pause process
 * left behind by every job, and post's `podman unshare` (with the runner's TMPDIR) in another namespace. So this
 * job's podman calls get a runtime dir of its own (process-wide: the CLI runs post in this process), whose pause
 * process post stops, and their `podman unshare` a store below it (unshareStoreBelow: the user's store must not
 * remember a dir that goes with the job). A scratch dir apart from the service's: post removes it last, after its
 * last `podman unshare`. Returns it, or undefined when podman's own choice stands.
 */
async function privateRuntimeDir(host: Host): Promise<string | undefined> {
  if (rootful || process.env.XDG_RUNTIME_DIR) return undefined;
  const dir = await scratchDir(host);
  process.env.XDG_RUNTIME_DIR = dir;
  unshareStoreBelow(dir);
  return dir;
}

async function startLocalService(host: Host, inputs: LocalOptions, interrupted?: AbortSignal): Promise<void> {
  if (process.platform !== 'linux') {
    throw new InputError(
      Inputs.mode,
      '`local` needs Linux (podman system service runs only there); use `mode: ssh` against a Linux host or podman machine.',
    );
  }
  if (!(await which('podman'))) throw new ActionError('podman is not installed (not found on PATH).');
  // Before the first podman call: even `podman --version` makes a rootless runtime dir.
  const runtimeDir = await privateRuntimeDir(host);
  const version = await podmanVersion(VERSION_TIMEOUT_MS);
  interrupted?.throwIfAborted();
  const scratch = await scratchDir(host);
  const placed = await planSocket(inputs.socket, scratch);
  const docker = dockerHost(placed.socket);
  if (inputs.exportDockerHost && !docker) {
    throw new InputError(
      Inputs.exportDockerHost,
      `the docker CLI cannot use the socket path '${placed.socket}' (it holds a '%' that starts no URL escape, or a control character); set \`socket\` to a path without them, or turn \`export-docker-host\` off.`,
    );
  }
  // Private to this service whatever the cache settings: buildah keeps the cache mounts below it.
  const tmpdir = join(scratch, 'tmp');
  const cacheDir = cacheMountDir(tmpdir, version);
  const plan: ServicePlan = { socket: placed.socket, tmpdir, logFile: join(scratch, 'service.log') };
  if (inputs.isolateStorage) {
    const base = join(scratch, 'storage');
    // Podman refuses a runroot over 50 characters (sockets live below it), so it gets the shortest name.
    const runroot = join(scratch, 'r');
    if (runroot.length > MAX_RUNROOT_CHARS) {
      throw new InputError(
        Inputs.isolateStorage,
        `podman refuses a runroot longer than ${MAX_RUNROOT_CHARS} characters, and below RUNNER_TEMP it would be '${runroot}' (${runroot.length}); run with a shorter RUNNER_TEMP or without isolate-storage.`,
      );
    }
    plan.storage = { root: join(base, 'root'), runroot };
    if (rootful) plan.storage.libpodTmp = join(base, 'libpod');
  }
  if (inputs.containersConf) {
    const variable = containersConfVariable(version);
    if (variable === CONTAINERS_CONF && process.env.CONTAINERS_CONF) {
      host.warning(
        `podman ${version.text} has no CONTAINERS_CONF_OVERRIDE: the service reads only ${inputs.containersConf}, ` +
          `not CONTAINERS_CONF=${process.env.CONTAINERS_CONF}.`,
      );
    }
    plan.containersConf = { path: inputs.containersConf, variable };
  }
  // A private store's containers are all the job's: post needs no mark there.
  let containerMark: string | undefined;
  if (!plan.storage) {
    const token = randomBytes(16).toString('hex');
    const layer = await writeMarkLayer(version, scratch, token, plan.containersConf?.path);
    if ('none' in layer) {
      host.info(
        `Containers the job makes in the shared store get no mark (${layer.none}): post finds only those still running.`,
      );
    } else {
      containerMark = token;
      if ('module' in layer) plan.modules = [layer.module];
      else plan.containersConf = layer.containersConf;
    }
  }
  const state: LocalState = {
    mode: 'local',
    registry: join(scratch, 'registry'),
    socket: placed.socket,
    socketOutsideDirs: placed.outside,
    ...(placed.outside ? { socketClaim: claimTarget(scratch) } : {}),
    logFile: plan.logFile,
    tmpdir,
    removeDirs: [scratch],
    ...(placed.createDir ? { socketDirCreated: placed.createDir } : {}),
    ready: false,
    isolatedStorage: inputs.isolateStorage,
    ...(containerMark ? { containerMark } : {}),
    ...(runtimeDir ? { runtimeDir } : {}),
  };
  if (inputs.cacheMounts) {
    const id = createHash('sha256').update(inputs.cacheKey).digest('hex').slice(0, 8);
    // Only a path here: the stage is made and emptied under its lock (cache-mounts.ts), never outside it.
    state.cacheStage = stablePath(`rbe-${id}`);
  }
  saveRunState(host, state);
  await mkdir(tmpdir, { mode: 0o700 });
  await mkdir(state.registry, { mode: 0o700 });
  // Before the restore, which can take minutes: the path is this job's from now on (socket-path.ts).
  await claimChosenSocket(host, state);

  host.info(
    `Starting podman ${version.text} service on ${socketUrl(plan.socket)} with TMPDIR=${tmpdir}` +
      `${plan.storage ? `, private storage in ${join(scratch, 'storage')}` : ''}` +
      `${plan.containersConf ? `, ${plan.containersConf.variable}=${plan.containersConf.path}` : ''}.`,
  );
  const stage = state.cacheStage;
  if (stage) {
    state.cache = await host.group('Restore cache mounts', () =>
      restoreCacheMounts(host, { stage, live: cacheDir }, inputs.cacheKey, inputs.restoreKeys, interrupted),
    );
    saveRunState(host, state);
  }
  interrupted?.throwIfAborted();

  const started = Date.now();
  state.serviceStartedMs = started;
  state.serviceOptions = serviceOptions(plan);
  const service = await spawnService(plan, state.registry);
  state.service = service.identity;
  saveRunState(host, state);
  const serverVersion = await waitUntilAnswering({
    what: 'podman system service',
    socket: plan.socket,
    child: service,
    logFile: plan.logFile,
    timeoutMs: inputs.startupTimeoutMs,
    interrupted,
    advice: 'raise `startup-timeout` if the machine is slow.',
  });
  const startupMs = Date.now() - started;
  await recordChosenSocket(host, state);
  host.info(`The service (pid ${service.identity.pid}) answered after ${formatDuration(startupMs)}.`);

  const url = socketUrl(plan.socket);
  host.exportVariable('CONTAINER_HOST', url);
  if (docker && inputs.exportDockerHost) host.exportVariable('DOCKER_HOST', docker);
  host.setOutput(Outputs.socket, plan.socket);
  host.setOutput(Outputs.containerHost, url);
  host.setOutput(Outputs.tmpdir, tmpdir);
  host.setOutput(Outputs.cacheDir, cacheDir);
  host.setOutput(Outputs.cacheHit, state.cache?.matchedKey ? 'true' : 'false');
  host.setOutput(Outputs.cacheMatchedKey, state.cache?.matchedKey ?? '');
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
async function serviceLogWorthShowing(state: LocalState, outcome: StopOutcome): Promise<string | undefined> {
  if (!state.ready) return 'the main step did not finish';
  if (outcome === 'not-running') return 'the service had exited before the post step';
  if (outcome === 'killed' || outcome === 'survived') return 'the service ignored SIGTERM';
  const log = await readFile(state.logFile, 'utf8').catch(() => '');
  if (/level=(error|fatal|panic)/.test(log)) return 'the service logged errors';
  if (/" 5\d\d \d+ "/.test(log)) return 'the service answered a request with a server error';
  return undefined;
}

/**
 * The pause process of the job's runtime dir. One that died since a service ran (killed, or `podman system
 * migrate`) is started again here: removing what rootless builds left may need `podman unshare`, which would
 * start one anyway, unseen by post, which looks for it only here (its pid file goes with the runtime dir).
 */
async function runtimeDirPause(
  runtimeDir: string,
  serviceRan: boolean,
): Promise<ProcessIdentity | undefined> {
  const running = await pauseProcess(runtimeDir);
  // Gone, it was removed by an earlier post, last of the job's dirs: nothing is left that needs the namespace,
  // and a `podman unshare` would only make it again, with a pause process no post looks for.
  if (running || !serviceRan || !(await pathExists(runtimeDir))) return running;
  await execAsStorageRoot('true', [], { timeoutMs: UNSHARE_TIMEOUT_MS, allowFailure: true });
  return pauseProcess(runtimeDir);
}

/**
 * Runs the `podman pod rm` / `podman rm` calls, several at once; what podman said for those that failed. One
 * call per pod or container: remote podman stops those of one call one after the other, each given its 5 s to
 * mind SIGTERM, so a dozen that ignore it (`sleep` as PID 1) would outlast one call's timeout.
 */
async function removeConcurrently(podman: PodmanClient, calls: readonly string[][]): Promise<string[]> {
  const failures: string[] = [];
  await mapLimit(calls, REMOVE_CONCURRENCY, async (args) => {
    const removed = await podman(args, {
      timeoutMs: REMOVE_CONTAINERS_TIMEOUT_MS,
      allowFailure: true,
    }).catch((e: unknown) => ({ exitCode: 1, stderr: errorMessage(e) }));
    if (removed.exitCode !== 0) failures.push(printable(removed.stderr.trim()));
  });
  return failures;
}

const removePod = (pod: string) => ['pod', 'rm', '--force', '--time', '5', pod];
const removeContainer = (id: string) => ['rm', '--force', '--time', '5', '--volumes', id];

/**
 * Containers in a private store would keep its mounts busy and outlive the service: all of them are this job's.
 * In the shared store, only those the job started through the service (job-containers.ts) are.
 */
async function removeJobContainers(host: Host, state: LocalState, podman: PodmanClient): Promise<void> {
  if (state.isolatedStorage) {
    const conmons = await conmonsOf(podman, await listIds(podman, ['ps', '--all']));
    // Pods first: podman removes an infra container only with its pod.
    const failures = await removeConcurrently(podman, (await listIds(podman, ['pod', 'ps'])).map(removePod));
    const containers = await listIds(podman, ['ps', '--all']);
    failures.push(...(await removeConcurrently(podman, containers.map(removeContainer))));
    // A conmon still running its container's cleanup, which opens the store, would mount its dirs again as they go.
    const lingering = (await Promise.all(conmons.map((c) => waitGone(c, STOP_GRACE_MS)))).filter(
      (gone) => !gone,
    );
    if (lingering.length > 0) failures.push(`${lingering.length} conmon process(es) did not end`);
    if (failures.length > 0)
      host.warning(`could not remove the service's containers: ${failures.join('; ')}`);
    return;
  }
  if (state.serviceStartedMs === undefined) return;
  const ours = await containersMadeBy(podman, {
    conmon: state.tmpdir,
    ...(state.containerMark ? { annotation: state.containerMark } : {}),
    sinceMs: state.serviceStartedMs,
  });
  if (ours.length === 0) return;
  // Podman refuses to remove a pod's infra container alone: the pod goes, with its containers (and their
  // anonymous volumes), unless it holds one the job did not make; then its infra container stays with it. The
  // anonymous volumes of a loose container (a database image's VOLUME) would pile up one per job, so they go too;
  // named volumes stay, they may be shared.
  const pods = await podsOnlyOurs(podman, ours);
  const kept = ours.filter((c) => c.infraOf && !pods.includes(c.infraOf));
  const gone = ours.filter((c) => !kept.includes(c));
  const loose = gone.filter((c) => !(c.pod && pods.includes(c.pod))).map((c) => c.id);
  const failures = await removeConcurrently(podman, [...pods.map(removePod), ...loose.map(removeContainer)]);
  const nameOf = (c: JobContainer) => printable(c.name || c.id.slice(0, 12));
  const names = gone.map(nameOf).join(', ');
  if (failures.length === 0) {
    if (gone.length > 0)
      host.info(`Removed ${gone.length} container(s) this job made through the service: ${names}.`);
  } else {
    host.warning(`could not remove the containers this job made (${names}): ${failures.join('; ')}`);
  }
  if (kept.length > 0) {
    host.info(
      `Left the infra container(s) ${kept.map(nameOf).join(', ')} of the job's pods, which hold containers the job did not make.`,
    );
  }
  const emptied = await removeEmptied(podman, gone, state.serviceStartedMs);
  if (emptied.length > 0)
    host.info(`Removed what was made for them and is now unused: ${emptied.map(printable).join(', ')}.`);
}

/** Stops the service and removes everything main created. Best-effort and repeatable: a second run finds nothing. */
async function stopLocalService(host: Host, state: LocalState): Promise<void> {
  if (state.runtimeDir) {
    process.env.XDG_RUNTIME_DIR = state.runtimeDir;
    unshareStoreBelow(state.runtimeDir);
  }
  const service = await registeredChild(state, SERVICE, state.service);
  if (service && (await isRunning(service))) {
    await removeJobContainers(host, state, podmanRemote(socketUrl(state.socket))).catch((e) =>
      host.warning(`could not remove the service's containers: ${errorMessage(e)}`),
    );
  } else if (service && state.ready && state.serviceOptions && (await pathExists(state.tmpdir))) {
    // Killed or OOM-killed during the job: what it started runs on under conmon, and what it made stays in the store.
    // Not once an earlier post removed the service's TMPDIR: that post stopped it, and a rootless podman now would
    // start a pause process for a runtime dir that is gone.
    host.info(
      `The podman service (pid ${service.pid}) was gone before post: the job's containers are removed by podman itself, on the service's store.`,
    );
    await removeJobContainers(host, state, podmanLocal(state.serviceOptions)).catch((e) =>
      host.warning(`could not remove the service's containers: ${errorMessage(e)}`),
    );
  }
  const outcome = await stopChild(host, 'podman service', service, STOP_GRACE_MS);
  const { cache, cacheStage: stage } = state;
  // A service that survived SIGKILL may still be writing: saving half-written cache mounts would spread them.
  if (stage && cache && outcome !== 'survived') {
    await host
      .group('Save cache mounts', () => saveCacheMounts(host, stage, cache))
      // The error may name a file a build made, control characters and all.
      .catch((error) => host.warning(`cache mounts not saved: ${printable(errorMessage(error))}`));
  } else if (stage) {
    await clearStage(host, stage).catch((error) =>
      host.warning(`could not empty ${stage}: ${errorMessage(error)}`),
    );
  }
  await showLog(host, 'podman service log', state.logFile, await serviceLogWorthShowing(state, outcome));
  // Its pid file goes with the runtime dir, and removing what rootless builds left still needs its namespace.
  const pause = state.runtimeDir ? await runtimeDirPause(state.runtimeDir, service !== undefined) : undefined;
  await removeOwnedPaths(host, state);
  await stopChild(host, 'podman pause process', pause, STOP_GRACE_MS, true);
}

export const localMode: ServingMode<LocalOptions, LocalState> = {
  start: startLocalService,
  stop: stopLocalService,
};
