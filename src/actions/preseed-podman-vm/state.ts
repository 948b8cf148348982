/**
 * What main leaves for post, as one typed record: the machine to remove and the staged machine to save. The
 * image's own cache save goes through core/cache's planned save. Post reads only this, and checks it: state
 * is text from another process.
 */
import { basename, isAbsolute, normalize } from 'node:path';
import { asPlannedSave, type PlannedSave } from '../../core/cache.js';
import type { Host } from '../../core/host.js';
import { State } from './constants.js';
import { PODMAN_CACHE_TEMP } from './image-store.js';
import { VM_TYPES } from './inputs.js';
import type { VmType } from './podman-host.js';

export interface PreseedState {
  /** A machine this action created (or restored) with `cleanup: true`; post stops and removes it. */
  removeMachine?: {
    name: string;
    /** CONTAINERS_MACHINE_PROVIDER as main ran podman with it, so post talks to the same provider. */
    provider: VmType;
  };
  /** cache-scope: machine missed: the staged machine post saves. */
  machineSave?: PlannedSave;
  /** The temporary name of a copy into podman's image cache, saved before it exists; post removes it if it is left. */
  podmanCacheTemp?: string;
}

export function saveRunState(host: Host, state: PreseedState): void {
  host.saveState(State.run, JSON.stringify(state));
}

/** The state main saved; what is missing or malformed counts as not saved. */
export function loadRunState(host: Host): PreseedState {
  const raw = host.getState(State.run);
  if (!raw) return {};
  let parsed: {
    removeMachine?: { name?: unknown; provider?: unknown };
    machineSave?: unknown;
    podmanCacheTemp?: unknown;
  };
  try {
    parsed = JSON.parse(raw) as typeof parsed;
  } catch {
    return {};
  }
  const state: PreseedState = {};
  const machine = parsed.removeMachine;
  if (
    typeof machine?.name === 'string' &&
    machine.name !== '' &&
    VM_TYPES.some((t) => t !== 'auto' && t === machine.provider)
  ) {
    state.removeMachine = { name: machine.name, provider: machine.provider as VmType };
  }
  const machineSave = asPlannedSave(parsed.machineSave);
  if (machineSave) state.machineSave = machineSave;
  // Post deletes it: only an absolute path of our temporary name's shape.
  const temp = parsed.podmanCacheTemp;
  if (
    typeof temp === 'string' &&
    isAbsolute(temp) &&
    normalize(temp) === temp &&
    PODMAN_CACHE_TEMP.test(basename(temp))
  ) {
    state.podmanCacheTemp = temp;
  }
  return state;
}
