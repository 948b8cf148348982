/**
 * The two ways this action serves CONTAINER_HOST, as one lifecycle: `local` (a podman service of this job's
 * own, local-mode.ts) and `ssh` (a tunnel to a remote service, ssh-mode.ts). main calls start, post calls stop;
 * both share the bookkeeping in state.ts, tracked.ts and cleanup.ts.
 */
import type { Host } from '../../core/host.js';

export interface ServingMode<Options, State> {
  /**
   * Makes the socket answer and exports CONTAINER_HOST. Records in state, before it creates anything, what stop
   * must undo, so a main killed at any point leaves post enough to clean up. `interrupted` is the CLI's Ctrl-C.
   */
  start(host: Host, options: Options, interrupted?: AbortSignal): Promise<void>;
  /** Stops and removes whatever start made, from state alone. Best-effort and repeatable. */
  stop(host: Host, state: State): Promise<void>;
}
