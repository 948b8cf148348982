import type { ActionDefinition } from '../../core/run.js';
import { readInputs, type RemoteBuildInputs } from './inputs.js';
import { cleanupRemoteBuildEnv } from './post.js';
import { runRemoteBuildEnv } from './main.js';

export const definition: ActionDefinition<RemoteBuildInputs> = {
  name: 'remote-build-env',
  readInputs,
  main: runRemoteBuildEnv,
  post: cleanupRemoteBuildEnv,
};
