/**
 * The dir of this test run (made by .ci/test.mjs, or by the global set-up when jest runs alone). It holds the
 * run's TMPDIR, the trixie root mount and fixtures the run's test files share; it is removed after the run.
 * Fixtures kept here rather than in TMPDIR are not leftovers: everything left in TMPDIR fails the run.
 */
import { mkdirSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

export const RUN_DIR_ENV = 'ICI_RUN_DIR';

/** `<run dir>/shared`: built once per run, shared by its workers, visible inside the trixie root too. */
export function runSharedDir(): string {
  const dir = join(process.env[RUN_DIR_ENV] ?? tmpdir(), 'shared');
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  return dir;
}

/** Read by test-environment.mjs, which removes the paths when the test file is done (after its afterAll). */
const REMOVE_AFTER_FILE = Symbol.for('image-ci.removeAfterFile');

/** Removes `path` (recursively) once the current test file has finished, hooks included. */
export function removeAfterFile(path: string): void {
  const registry = globalThis as unknown as Record<symbol, string[] | undefined>;
  (registry[REMOVE_AFTER_FILE] ??= []).push(path);
}

/** A fresh dir under the run's TMPDIR (short: socket paths go below it), removed once the test file has finished. */
export function tempDirForFile(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  removeAfterFile(dir);
  return dir;
}
