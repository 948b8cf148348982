/**
 * Why something failed, told twice. `detail` is the full message (it may quote a registry's error body, cut to
 * one printable line) for the log and the step's error. `reason` is in our own words with only the HTTP status
 * and a well-formed OCI error code: it goes to the `failed-refs` output and the job summary, which later steps
 * read and workflows may splice into scripts, so no text chosen by a registry ever reaches them.
 */
import { DigestMismatchError } from '../../core/oci/digest.js';
import { RegistryError } from '../../core/oci/errors.js';
import { TransientError } from '../../core/oci/retry.js';
import { errorMessage } from '../../core/run.js';

export interface Failure {
  detail: string;
  reason: string;
}

const OCI_CODE = /^[A-Z][A-Z_]{0,39}$/;

export function failureOf(error: unknown): Failure {
  return { detail: errorMessage(error), reason: reasonOf(error) };
}

function reasonOf(error: unknown): string {
  if (error instanceof DigestMismatchError) return 'content did not match its digest';
  if (error instanceof RegistryError && error.status !== undefined) {
    const code = error.code && OCI_CODE.test(error.code) ? ` ${error.code}` : '';
    return `the registry answered HTTP ${error.status}${code}`;
  }
  if (error instanceof TransientError)
    return 'no usable answer from the registry (network failure or timeout)';
  return 'failed (the log says why)';
}
