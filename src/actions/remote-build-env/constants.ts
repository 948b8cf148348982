/** The names action.yml gives inputs and outputs, and the key main saves its state under for post. */

export const Inputs = {
  mode: 'mode',
  socket: 'socket',
  isolateStorage: 'isolate-storage',
  containersConf: 'containers-conf',
  startupTimeout: 'startup-timeout',
  exportDockerHost: 'export-docker-host',
  host: 'host',
  sshKey: 'ssh-key',
  knownHosts: 'known-hosts',
  insecureHostKey: 'insecure-host-key',
  cacheMounts: 'cache-mounts',
  cacheKey: 'cache-key',
  restoreKeys: 'restore-keys',
} as const;

export const Outputs = {
  socket: 'socket',
  containerHost: 'container-host',
  tmpdir: 'tmpdir',
  cacheDir: 'cache-dir',
  cacheHit: 'cache-hit',
  cacheMatchedKey: 'cache-matched-key',
} as const;

export const State = {
  /** The whole RunState (state.ts) as JSON, saved again after every step that creates something. */
  run: 'remote-build-env',
} as const;
