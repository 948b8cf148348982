import type { ActionDefinition } from '../../core/run.js';
import { readInputs, type PruneInputs } from './inputs.js';
import { main } from './main.js';

export const definition: ActionDefinition<PruneInputs> = {
  name: 'prune-simplestreams',
  readInputs,
  main,
};
