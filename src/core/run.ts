/**
 * The one error boundary of every entry point. Main failures fail the step (a user mistake is reported as such,
 * without a stack); post failures are logged as warnings and never change the job's result.
 */
import type { Host } from './host.js';
import { InputError, type InputSource } from './inputs.js';

export interface ActionDefinition<I = unknown> {
  readonly name: string;
  /** Parses and validates every input once; throws InputError naming the input on a user mistake. */
  readInputs(src: InputSource): I;
  main(host: Host, inputs: I): Promise<void>;
  /** Reads only what main saved in state; must be idempotent and best-effort. */
  post?(host: Host): Promise<void>;
}

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_BAD_INPUT = 2;

/**
 * What the world did: a registry refused or failed, a service did not answer, a tool exited non-zero, a download
 * was cut, a cached entry was damaged. Exit 1, no stack; the message says what happened and, where there is one,
 * what to try. The other side of the rule is InputError (core/inputs.ts): what the user gave and can fix, exit 2.
 *
 * Anything else that reaches runMain is a bug: exit 1 as well, with the stack in the debug log. So wrap a
 * library's or tool's error in an ActionError where the user should see it as an event, never an InputError.
 */
export class ActionError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ActionError';
  }
}

/** The message of anything thrown; duck-typed, since an Error from another realm (vm, worker) is no `instanceof Error`. */
export function errorMessage(error: unknown): string {
  const message = (error as { message?: unknown } | null)?.message;
  return typeof message === 'string' ? message : String(error);
}

/** Runs an action's main step; returns the process exit code (the caller decides whether to exit). */
export async function runMain<I>(definition: ActionDefinition<I>, host: Host): Promise<number> {
  try {
    const inputs = definition.readInputs(host.inputs);
    await definition.main(host, inputs);
    return EXIT_OK;
  } catch (error) {
    if (error instanceof InputError) {
      host.error(`${error.message}`);
      return EXIT_BAD_INPUT;
    }
    host.error(`${definition.name} failed: ${errorMessage(error)}`);
    if (!(error instanceof ActionError) && error instanceof Error && error.stack) host.debug(error.stack);
    return EXIT_FAILED;
  }
}

/** Runs an action's post step. Never fails: a cleanup problem is a warning, the main step's result stands. */
export async function runPost<I>(definition: ActionDefinition<I>, host: Host): Promise<number> {
  if (!definition.post) return EXIT_OK;
  try {
    await definition.post(host);
  } catch (error) {
    host.warning(`${definition.name} post step: ${errorMessage(error)}`);
    if (error instanceof Error && error.stack) host.debug(error.stack);
  }
  return EXIT_OK;
}
