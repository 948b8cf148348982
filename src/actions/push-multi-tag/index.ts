import { ActionError, type ActionDefinition } from '../../core/run.js';
import { readInputs, type PushInputs } from './inputs.js';

export const definition: ActionDefinition<PushInputs> = {
  name: 'push-multi-tag',
  readInputs,
  async main() {
    throw new ActionError('push-multi-tag is not implemented yet: see its issue; nothing was done.');
  },
};
