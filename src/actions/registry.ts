import type { ActionDefinition } from '../core/run.js';
import { definition as preseedPodmanVm } from './preseed-podman-vm/index.js';
import { definition as pruneSimplestreams } from './prune-simplestreams/index.js';
import { definition as pushMultiTag } from './push-multi-tag/index.js';
import { definition as remoteBuildEnv } from './remote-build-env/index.js';

/** Every action by its name, the same name used for actions/<name>/, dist/<name>/ and `image-ci <name>`. */
export const ACTIONS: Readonly<Record<string, ActionDefinition<never>>> = {
  'preseed-podman-vm': preseedPodmanVm as ActionDefinition<never>,
  'push-multi-tag': pushMultiTag as ActionDefinition<never>,
  'prune-simplestreams': pruneSimplestreams as ActionDefinition<never>,
  'remote-build-env': remoteBuildEnv as ActionDefinition<never>,
};

export const ACTION_NAMES = Object.keys(ACTIONS);

/** The action of that name; only own keys, so `constructor` or `__proto__` (user input) is no action. */
export function actionNamed(name: string): ActionDefinition<never> | undefined {
  return Object.hasOwn(ACTIONS, name) ? ACTIONS[name] : undefined;
}
