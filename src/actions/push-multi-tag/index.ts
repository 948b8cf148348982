import type { ActionDefinition } from '../../core/run.js';
import { readInputs, type PushInputs } from './inputs.js';
import { pushMultiTag } from './main.js';
import { pushMultiTagPost } from './post.js';

export const definition: ActionDefinition<PushInputs> = {
  name: 'push-multi-tag',
  readInputs,
  main: pushMultiTag,
  post: pushMultiTagPost,
};
