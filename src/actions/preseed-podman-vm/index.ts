import { ActionError, type ActionDefinition } from '../../core/run.js';
import { readInputs, type PreseedInputs } from './inputs.js';

export const definition: ActionDefinition<PreseedInputs> = {
  name: 'preseed-podman-vm',
  readInputs,
  async main() {
    throw new ActionError('preseed-podman-vm is not implemented yet: see its issue; nothing was done.');
  },
};
