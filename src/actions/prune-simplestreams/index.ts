import { ActionError, type ActionDefinition } from '../../core/run.js';
import { readInputs, type PruneInputs } from './inputs.js';

export const definition: ActionDefinition<PruneInputs> = {
  name: 'prune-simplestreams',
  readInputs,
  async main() {
    throw new ActionError('prune-simplestreams is not implemented yet: see its issue; nothing was done.');
  },
};
