/**
 * The test set-up (.ci/setup.mjs, run by `npm test` first) as a newcomer without root meets it: it stops at
 * once and changes nothing, naming what is missing and the one command that installs it and runs the tests. Run
 * as the test user with a package list naming a package no machine has and an empty test cache (so the podman
 * 5 root is missing too).
 */
import { describe, expect, it } from '@jest/globals';
import { chmodSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT } from '../support/harness.js';
import { hostPodman, runWith, testUser } from '../support/podman-matrix.js';

describe('.ci/setup.mjs without root', () => {
  it('stops, names the missing packages and the missing root, prints the one command, changes nothing', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ici-setup-'));
    try {
      chmodSync(dir, 0o755);
      const list = join(dir, 'packages.txt');
      writeFileSync(list, '[host]\ncoreutils\nici-no-such-package\n\n[trixie-root]\npodman\n');
      const env = {
        PATH: process.env.PATH,
        HOME: dir,
        IMAGE_CI_PACKAGES: list,
        IMAGE_CI_TEST_CACHE: join(dir, 'cache'),
      };
      const r = await runWith(hostPodman(), process.execPath, [join(REPO_ROOT, '.ci/setup.mjs')], {
        user: testUser(),
        env,
        cwd: REPO_ROOT,
        allowFailure: true,
        timeoutMs: 30_000,
      });
      expect({ exit: r.exitCode, stderr: r.stderr }).toEqual({ exit: 1, stderr: '' });
      const lines = r.stdout.split('\n');
      expect(lines).toContain('setup: missing Debian packages: ici-no-such-package');
      expect(lines.filter((l) => l.startsWith('setup: missing the podman 5 root '))).toEqual([
        expect.stringContaining(join(dir, 'cache', 'trixie-root')),
      ]);
      expect(r.stdout).toMatch(/^ {2}(sudo env "PATH=\$PATH" npm test|su root -c 'cd .+ && npm test')$/m);
      expect(readdirSync(dir)).toEqual(['packages.txt']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
