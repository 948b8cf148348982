import { InputError } from '../../src/core/inputs.js';

/** Runs fn and returns the InputError it threw, so a test can assert on the input name and message. */
export function inputError(fn: () => unknown): InputError {
  try {
    fn();
  } catch (e) {
    if (e instanceof InputError) return e;
    throw e;
  }
  throw new Error('expected an InputError');
}
