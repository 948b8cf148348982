/**
 * A job whose main step runs now and whose post step runs when the caller says, with the runner harness: what a
 * workflow does when later steps (builds) come between an action's main and its post, and what two jobs running
 * side by side look like. Post gets main's state (STATE_*) and exported env, as the runner hands them over.
 */
import { join } from 'node:path';
import { REPO_ROOT, runAction, type RunOptions, type RunResult, type StepResult } from './harness.js';
import type { PodmanTestEnv } from './podman.js';
import { stepScripts } from './podman-matrix.js';

export interface SplitJob {
  main: RunResult;
  /** Runs the post step (`env` on top of main's); may be called again (post must be idempotent). */
  post(env?: Record<string, string>): Promise<StepResult>;
  readonly posted: boolean;
}

export async function startSplitJob(options: RunOptions & { action: string }): Promise<SplitJob> {
  const main = await runAction({ ...options, skipPost: true });
  let posted = false;
  return {
    main,
    get posted() {
      return posted;
    },
    async post(env = {}) {
      posted = true;
      const stateEnv: Record<string, string> = {};
      for (const [k, v] of Object.entries(main.main.state)) stateEnv[`STATE_${k}`] = v;
      const { action, ...rest } = options;
      const r = await runAction({
        ...rest,
        mainScript: options.postScript ?? join(REPO_ROOT, 'dist', action, 'post.js'),
        actionYml: join(REPO_ROOT, 'actions', action, 'action.yml'),
        env: { ...options.env, ...main.exportedEnv, ...stateEnv, ...env },
        skipPost: true,
      });
      return r.main;
    },
  };
}

/** A split job of `action` run as `pm`'s podman row runs it (its podman, and its node inside a root), `env` on top. */
export function startSplitJobOn(
  pm: PodmanTestEnv,
  action: string,
  inputs: Record<string, string>,
  env: Record<string, string>,
  runnerTemp: string,
): Promise<SplitJob> {
  return startSplitJob({
    action,
    ...stepScripts(pm.variant, action, pm.dir),
    inputs,
    env: { ...pm.env, ...env },
    runnerTemp,
  });
}
