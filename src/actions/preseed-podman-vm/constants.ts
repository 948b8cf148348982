/** The names action.yml gives inputs and outputs, the state key, and the action's fixed paths. */

export const Inputs = {
  image: 'image',
  vmType: 'vm-type',
  arch: 'arch',
  cache: 'cache',
  cacheKeyPrefix: 'cache-key-prefix',
  cacheScope: 'cache-scope',
  setDefault: 'set-default',
  init: 'init',
  machineName: 'machine-name',
  cpus: 'cpus',
  memory: 'memory',
  diskSize: 'disk-size',
  rootful: 'rootful',
  start: 'start',
  cleanup: 'cleanup',
} as const;

export const Outputs = {
  imagePath: 'image-path',
  imageDigest: 'image-digest',
  cacheHit: 'cache-hit',
  containersConf: 'containers-conf',
  machineName: 'machine-name',
  machineCacheHit: 'machine-cache-hit',
} as const;

export const State = {
  /** The whole PreseedState (state.ts) as JSON. The image's cache save is core/cache's planned save. */
  run: 'preseed-podman-vm',
} as const;

/** `$RUNNER_TEMP/ici-pvm`: short, and the same path every run (cache paths are part of the cache version). */
export const STABLE_DIR_NAME = 'pvm';

/** Inside the stable dir: the staged machine (cache-scope: machine). */
export const MACHINE_STAGE_DIR = 'machine';
