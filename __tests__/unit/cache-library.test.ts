/**
 * The cache wrapper relies on a few things about the installed @actions/cache that its types do not promise:
 * the key limits it enforces, and the lines its save logs for each error it catches (the only signal of why it
 * returned -1). These tests read the installed version, so upgrading the library re-checks them.
 */
import { describe, expect, it } from '@jest/globals';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as library from '@actions/cache';
import { LIBRARY_SAVE_LOG, saveToActionsCache } from '../../src/core/cache-actions.js';
import { cacheKeyProblem, MAX_CACHE_KEY_LENGTH } from '../../src/core/cache-key.js';
import { CliHost } from '../../src/core/host.js';
import { MapInputSource } from '../../src/core/inputs.js';
import { REPO_ROOT } from '../support/harness.js';

const libraryDir = join(REPO_ROOT, 'node_modules/@actions/cache');
const source = readFileSync(join(libraryDir, 'lib/cache.js'), 'utf8');

/** What saveCache throws for a key, before it looks at the environment (paths are checked first). */
async function thrownFor(key: string): Promise<unknown> {
  try {
    await library.saveCache(['/nonexistent/ici-cache-library-test'], key);
  } catch (error) {
    return error;
  }
  return undefined;
}

describe('installed @actions/cache', () => {
  it('is the major version the wrapper was written against', () => {
    const pkg = JSON.parse(readFileSync(join(libraryDir, 'package.json'), 'utf8')) as { version: string };
    expect(pkg.version).toMatch(/^6\./);
  });

  it(`refuses exactly the keys cacheKeyProblem refuses: over ${MAX_CACHE_KEY_LENGTH} characters or with a comma`, async () => {
    for (const key of ['k'.repeat(MAX_CACHE_KEY_LENGTH + 1), 'a,b']) {
      expect(cacheKeyProblem(key)).toBeDefined();
      expect(await thrownFor(key)).toBeInstanceOf(library.ValidationError);
    }
    const longest = 'k'.repeat(MAX_CACHE_KEY_LENGTH);
    expect(cacheKeyProblem(longest)).toBeUndefined();
    expect(await thrownFor(longest)).not.toBeInstanceOf(library.ValidationError);
  });

  it('logs the lines classifySaveFailure reads, one per error class its save catches', () => {
    const lines = [
      // cache-mode forbids writes
      `core.info(\`${LIBRARY_SAVE_LOG.skipped}the effective cache-mode`,
      // ReserveCacheError arm, then any other error as warning or (HTTP 5xx) error
      `core.info(\`${LIBRARY_SAVE_LOG.failed}\${typedError.message}\`);`,
      `core.warning(\`${LIBRARY_SAVE_LOG.failed}\${typedError.message}\`);`,
      `core.error(\`${LIBRARY_SAVE_LOG.failed}\${typedError.message}\`);`,
      // FinalizeCacheError arm: the bare message
      'core.warning(typedError.message);',
      // v2 reservation: the cause, and the service's answer
      `core.debug(\`${LIBRARY_SAVE_LOG.reserveCause}\${error}\`);`,
      `core.warning(\`${LIBRARY_SAVE_LOG.reservation}\${response.message}\`);`,
      'another job may be creating this cache',
    ];
    for (const line of lines) expect(source).toContain(line);
    expect(library.CACHE_WRITE_DENIED_PREFIX).toBe('cache write denied:');
  });

  it('a key the library refuses is reported from its ValidationError, not from its log', async () => {
    const host = new CliHost({ inputs: new MapInputSource({}), log: () => undefined, out: () => undefined });
    const result = await saveToActionsCache(host, ['/nonexistent/ici-cache-library-test'], 'a,b');
    expect(result).toEqual({
      outcome: 'failed',
      message: '@actions/cache refused the entry: Key Validation Error: a,b cannot contain commas.',
    });
  });
});
