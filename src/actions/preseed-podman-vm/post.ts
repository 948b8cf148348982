/**
 * post: save the image and (cache-scope: machine) the staged machine on a cache miss, as main planned, and
 * remove a machine main created. Never fails; a second run finds nothing left to do.
 */
import { rm } from 'node:fs/promises';
import { runPlannedSave, saveCache } from '../../core/cache.js';
import { exec } from '../../core/exec.js';
import type { Host } from '../../core/host.js';
import { errorMessage } from '../../core/run.js';
import { removeAtomicTemps } from '../../core/atomic.js';
import { removeScratchDirs, stablePath } from '../../core/workspace.js';
import { STABLE_DIR_NAME } from './constants.js';
import { removeArgs, stopArgs } from './machine-init.js';
import { PROVIDER_ENV } from './podman-host.js';
import { loadRunState, saveRunState } from './state.js';

const CLEANUP_TIMEOUT_MS = 5 * 60_000;

export async function post(host: Host): Promise<void> {
  await runPlannedSave(host);
  // A download main did not finish (killed, cancelled) left its partial file in a scratch dir.
  await removeScratchDirs(host).catch((error) =>
    host.warning(`Could not remove a partial download: ${errorMessage(error)}`),
  );
  // A main killed while it wrote the containers.conf or an image's record left the temp file beside it.
  await removeAtomicTemps(stablePath(STABLE_DIR_NAME)).catch((error) =>
    host.warning(`Could not remove a partly written file: ${errorMessage(error)}`),
  );
  const state = loadRunState(host);
  const { machineSave, removeMachine, podmanCacheTemp } = state;
  // Taken out of state before acting on it, so a repeated post does not do it again.
  saveRunState(host, {});
  if (podmanCacheTemp) {
    await rm(podmanCacheTemp, { force: true }).catch((error: unknown) =>
      host.warning(`Could not remove a partial copy in podman's image cache: ${errorMessage(error)}`),
    );
  }
  // saveCache never throws; it logs why a save did not happen.
  if (machineSave) await saveCache(host, machineSave.paths, machineSave.key);
  if (!removeMachine) return;
  const { name, provider } = removeMachine;
  const env = { ...process.env, [PROVIDER_ENV]: provider };
  // Stop may fail for a machine that never started; rm --force handles both states.
  await exec('podman', stopArgs(name), { timeoutMs: CLEANUP_TIMEOUT_MS, env, allowFailure: true });
  try {
    await exec('podman', removeArgs(name), { timeoutMs: CLEANUP_TIMEOUT_MS, env });
    host.info(`Removed podman machine ${name}.`);
  } catch (error) {
    host.warning(`Could not remove podman machine ${name}: ${errorMessage(error)}`);
  }
}
