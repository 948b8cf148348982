// The jest environment of every test file: Node's, plus removal of what the file registered with
// removeAfterFile (run-dir.ts) once the file is done, after its own afterAll hooks (a post step run in afterAll
// still finds its runner dirs). What cannot be removed (a mount still on it) stays for the suite's leftovers
// check to name.
import { rmSync } from 'node:fs';
import { TestEnvironment as NodeEnvironment } from 'jest-environment-node';

export const REMOVE_AFTER_FILE = Symbol.for('image-ci.removeAfterFile');

export default class TestEnvironment extends NodeEnvironment {
  async teardown() {
    for (const path of this.global[REMOVE_AFTER_FILE] ?? []) {
      try {
        rmSync(path, { recursive: true, force: true });
      } catch {
        // reported by the leftovers check
      }
    }
    await super.teardown();
  }
}
