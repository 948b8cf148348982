import { ActionError, type ActionDefinition } from '../../core/run.js';
import { readInputs, type RemoteBuildInputs } from './inputs.js';

export const definition: ActionDefinition<RemoteBuildInputs> = {
  name: 'remote-build-env',
  readInputs,
  async main() {
    throw new ActionError('remote-build-env is not implemented yet: see its issue; nothing was done.');
  },
};
