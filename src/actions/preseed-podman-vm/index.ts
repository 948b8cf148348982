import type { ActionDefinition } from '../../core/run.js';
import { readInputs, type PreseedInputs } from './inputs.js';
import { main } from './main.js';
import { post } from './post.js';

export const definition: ActionDefinition<PreseedInputs> = {
  name: 'preseed-podman-vm',
  readInputs,
  main,
  post,
};
