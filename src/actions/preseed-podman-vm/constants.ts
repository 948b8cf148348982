export const Outputs = {
  imagePath: 'image-path',
  imageDigest: 'image-digest',
  cacheHit: 'cache-hit',
  containersConf: 'containers-conf',
  machineName: 'machine-name',
  machineCacheHit: 'machine-cache-hit',
} as const;

export const State = {
  /** A machine this action created and post should remove (set only with `cleanup: true`). */
  createdMachine: 'pvm-created-machine',
  /** Env podman ran with in main (CONTAINERS_MACHINE_PROVIDER), so post talks to the same provider. */
  provider: 'pvm-provider',
  /** cache-scope: machine missed: {paths, key} of the staged machine for post to save. */
  machineSave: 'pvm-machine-save',
} as const;

/** `$RUNNER_TEMP/ici-pvm`: short, and the same path every run (cache paths are part of the cache version). */
export const STABLE_DIR_NAME = 'pvm';

/** Inside the stable dir: the staged machine (cache-scope: machine). */
export const MACHINE_STAGE_DIR = 'machine';
