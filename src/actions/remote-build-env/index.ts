import type { ActionDefinition } from '../../core/run.js';
import { readInputs, type RemoteBuildInputs } from './inputs.js';
import { main } from './main.js';
import { post } from './post.js';

export const definition: ActionDefinition<RemoteBuildInputs> = {
  name: 'remote-build-env',
  readInputs,
  main,
  post,
};
