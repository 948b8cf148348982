import type { ActionDefinition } from '../../core/run.js';
import { readInputs, type PreseedInputs } from './inputs.js';
import { preseedMain } from './main.js';
import { preseedPost } from './post.js';

export const definition: ActionDefinition<PreseedInputs> = {
  name: 'preseed-podman-vm',
  readInputs,
  main: preseedMain,
  post: preseedPost,
};
