/**
 * post: save the image and (cache-scope: machine) the staged machine on a cache miss, as main planned, and
 * remove a machine main created. Never fails.
 */
import { runPlannedSave, saveCache } from '../../core/cache.js';
import { exec } from '../../core/exec.js';
import type { Host } from '../../core/host.js';
import { errorMessage } from '../../core/run.js';
import { State } from './constants.js';
import { removeArgs, stopArgs } from './machine-init.js';

const CLEANUP_TIMEOUT_MS = 5 * 60_000;

export async function preseedPost(host: Host): Promise<void> {
  await runPlannedSave(host);
  await saveStagedMachine(host);
  const machine = host.getState(State.createdMachine);
  if (!machine) return;
  const env = { ...process.env, CONTAINERS_MACHINE_PROVIDER: host.getState(State.provider) || undefined };
  // Stop may fail for a machine that never started; rm --force handles both states.
  await exec('podman', stopArgs(machine), { timeoutMs: CLEANUP_TIMEOUT_MS, env, allowFailure: true });
  try {
    await exec('podman', removeArgs(machine), { timeoutMs: CLEANUP_TIMEOUT_MS, env });
    host.info(`Removed podman machine ${machine}.`);
  } catch (error) {
    host.warning(`Could not remove podman machine ${machine}: ${errorMessage(error)}`);
  }
}

/** The image save has core/cache's single plan slot; the machine, a second entry, has its own state. */
async function saveStagedMachine(host: Host): Promise<void> {
  const raw = host.getState(State.machineSave);
  if (!raw) return;
  host.saveState(State.machineSave, '');
  try {
    const plan = JSON.parse(raw) as { paths: string[]; key: string };
    await saveCache(host, plan.paths, plan.key);
  } catch (error) {
    host.warning(`The machine was not saved to the cache: ${errorMessage(error)}`);
  }
}
