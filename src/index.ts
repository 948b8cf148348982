/**
 * The one bundle behind every entry file in dist/: dist/<name>/main.js and post.js call runAction, the root
 * action calls runRootAction, and dist/cli.js calls runCli. One bundle instead of nine keeps dist/ small and
 * guarantees the CLI and the actions run the same code.
 */
import { ActionsHost } from './core/host.js';
import { InputError } from './core/inputs.js';
import { maskProxyCredentials } from './core/proxy-env.js';
import { runMain, runPost, EXIT_BAD_INPUT } from './core/run.js';
import { ACTION_NAMES, actionNamed } from './actions/registry.js';

export { runCli } from './cli/cli.js';

export type Phase = 'main' | 'post';

export async function runAction(name: string, phase: Phase): Promise<void> {
  const definition = actionNamed(name);
  if (!definition) throw new Error(`unknown action ${name}`);
  const host = new ActionsHost();
  maskProxyCredentials(host);
  const code = phase === 'main' ? await runMain(definition, host) : await runPost(definition, host);
  // Exit now: a cache call abandoned after its timeout can hold a socket open and keep a finished step alive.
  process.exit(code);
}

/** The root action.yml: the `action` input picks one of the four. */
export async function runRootAction(phase: Phase): Promise<void> {
  const host = new ActionsHost();
  const name = host.inputs.get('action');
  if (!name || !actionNamed(name)) {
    if (phase === 'post') return; // main already reported it
    const error = new InputError(
      'action',
      `must name one of ${ACTION_NAMES.join(', ')}; got '${name ?? ''}'.`,
    );
    host.error(error.message);
    process.exit(EXIT_BAD_INPUT);
  }
  await runAction(name, phase);
}
