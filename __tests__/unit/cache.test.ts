import { afterEach, beforeEach, describe, expect, it } from '@jest/globals';
import { cacheBackend, planCacheSave, runPlannedSave } from '../../src/core/cache.js';
import { buildCacheKey, cacheKeyPrefix } from '../../src/core/cache-key.js';
import { cacheCallTimeoutMs, classifySaveFailure, type LibraryLine } from '../../src/core/cache-actions.js';
import { matchEntry } from '../../src/core/cache-dir.js';
import { CliHost } from '../../src/core/host.js';
import { MapInputSource } from '../../src/core/inputs.js';

function cliHost(): { host: CliHost; log: string[] } {
  const log: string[] = [];
  const host = new CliHost({
    inputs: new MapInputSource({}),
    log: (l) => log.push(l),
    out: (l) => log.push(l),
  });
  return { host, log };
}

describe('buildCacheKey', () => {
  const env = { RUNNER_OS: 'Linux', RUNNER_ARCH: 'X64' };

  it('joins prefix, runner OS and arch with a 12-hex hash of the inputs', () => {
    expect(buildCacheKey({ prefix: 'vm', inputs: { image: 'a' } }, env)).toMatch(
      /^vm-Linux-X64-[0-9a-f]{12}$/,
    );
  });

  it('hashes inputs independently of their order and dependent on every value', () => {
    const a = buildCacheKey({ prefix: 'p', inputs: { x: '1', y: '2' } }, env);
    expect(buildCacheKey({ prefix: 'p', inputs: { y: '2', x: '1' } }, env)).toBe(a);
    expect(buildCacheKey({ prefix: 'p', inputs: { x: '1', y: '3' } }, env)).not.toBe(a);
    expect(buildCacheKey({ prefix: 'p', inputs: { x: '1', z: '2' } }, env)).not.toBe(a);
  });

  it('omits the hash without inputs, appends a suffix, and honours explicit os/arch', () => {
    expect(buildCacheKey({ prefix: 'p' }, env)).toBe('p-Linux-X64');
    expect(buildCacheKey({ prefix: 'p', os: 'macOS', arch: 'ARM64', suffix: '7' }, env)).toBe(
      'p-macOS-ARM64-7',
    );
  });

  it('falls back to the process platform when RUNNER_OS/ARCH are absent', () => {
    expect(buildCacheKey({ prefix: 'p' }, {})).toMatch(/^p-(Linux|macOS|Windows)-(X64|ARM64|ARM|X86)$/);
  });

  it('gives a restore prefix that every key of the kind starts with', () => {
    const prefix = cacheKeyPrefix({ prefix: 'p', inputs: { a: 'b' } }, env);
    expect(prefix).toBe('p-Linux-X64-');
    expect(buildCacheKey({ prefix: 'p', inputs: { a: 'c' } }, env).startsWith(prefix)).toBe(true);
  });

  it('refuses keys the cache service would refuse', () => {
    expect(() => buildCacheKey({ prefix: 'a,b' }, env)).toThrow(/comma/);
    expect(() => buildCacheKey({ prefix: 'x'.repeat(600) }, env)).toThrow(/512/);
  });
});

describe('cacheBackend', () => {
  it('prefers the Actions cache service (v2 or v1), then a cache dir, else none', () => {
    const v2 = { ACTIONS_CACHE_SERVICE_V2: 'true', ACTIONS_RESULTS_URL: 'http://x/' };
    expect(cacheBackend({ ...v2, IMAGE_CI_CACHE_DIR: '/c' })).toBe('actions');
    expect(cacheBackend({ ACTIONS_CACHE_URL: 'http://x/' })).toBe('actions');
    expect(cacheBackend({ ACTIONS_CACHE_SERVICE_V2: 'true', IMAGE_CI_CACHE_DIR: '/c' })).toBe('dir');
    expect(cacheBackend({ ACTIONS_RESULTS_URL: 'http://x/' })).toBe('none');
    expect(cacheBackend({})).toBe('none');
  });
});

describe('cacheCallTimeoutMs', () => {
  it('defaults to 20 minutes, reads IMAGE_CI_CACHE_TIMEOUT as a duration, and names the variable when invalid', () => {
    expect(cacheCallTimeoutMs({})).toBe(20 * 60_000);
    expect(cacheCallTimeoutMs({ IMAGE_CI_CACHE_TIMEOUT: '90s' })).toBe(90_000);
    expect(() => cacheCallTimeoutMs({ IMAGE_CI_CACHE_TIMEOUT: 'soon' })).toThrow(
      /IMAGE_CI_CACHE_TIMEOUT='soon'/,
    );
  });
});

describe('matchEntry (directory backend restore order)', () => {
  const entries = [
    { key: 'deps-a', createdAt: 1 },
    { key: 'deps-b', createdAt: 3 },
    { key: 'other-c', createdAt: 5 },
  ];

  it('takes the exact primary key even when a newer prefix match exists', () => {
    expect(matchEntry(entries, 'deps-a', ['deps-'])?.key).toBe('deps-a');
  });

  it('takes the newest prefix match, trying the key and then each restore key in order', () => {
    expect(matchEntry(entries, 'deps-', [])?.key).toBe('deps-b');
    expect(matchEntry(entries, 'deps-z', ['nope-', 'other-', 'deps-'])?.key).toBe('other-c');
    expect(matchEntry(entries, 'zzz', ['yyy'])).toBeUndefined();
  });
});

describe('classifySaveFailure (why @actions/cache returned -1)', () => {
  const debug = (text: string): LibraryLine => ({ kind: 'debug', text });
  const info = (text: string): LibraryLine => ({ kind: 'info', text });
  const warning = (text: string): LibraryLine => ({ kind: 'warning', text });
  const reserveInfo = info(
    'Failed to save: Unable to reserve cache with key k, another job may be creating this cache.',
  );

  it('v2: a 409 on CreateCacheEntry is another job saving the key', () => {
    const r = classifySaveFailure([
      debug(
        'Failed to reserve cache: Error: Failed to CreateCacheEntry: Received non-retryable error: Failed request: (409) Conflict: cache entry with the same key, version, and scope already exists',
      ),
      reserveInfo,
    ]);
    expect(r.outcome).toBe('exists');
    expect(r.message).toMatch(/already exists/);
  });

  it('v2: the same "another job" line after 5xx retries is an outage', () => {
    const r = classifySaveFailure([
      debug(
        'Failed to reserve cache: Error: Failed to CreateCacheEntry: Failed to make request after 5 attempts: Failed request: (500) Internal Server Error: injected',
      ),
      reserveInfo,
    ]);
    expect(r.outcome).toBe('unavailable');
  });

  it('network errors and v1 5xx are outages', () => {
    expect(
      classifySaveFailure([warning('Failed to save: Unable to make request: ECONNREFUSED')]).outcome,
    ).toBe('unavailable');
    expect(
      classifySaveFailure([warning('Failed to save: reserveCache failed: Cache service responded with 503')])
        .outcome,
    ).toBe('unavailable');
  });

  it('size refusals of both protocols are too-large', () => {
    expect(
      classifySaveFailure([
        warning(
          'Failed to save: Cache size of ~1 MB (1048576 B) is over the data cap limit, not saving cache.',
        ),
      ]).outcome,
    ).toBe('too-large');
    expect(
      classifySaveFailure([warning('cache entry too large: 5 bytes is over the limit of 1')]).outcome,
    ).toBe('too-large');
  });

  it('a write denied by policy is a skip, like a read-only cache mode (the library only warns)', () => {
    const denied = warning(
      'Failed to save: Unable to reserve cache with key k. More details: cache write denied: event is read-only',
    );
    expect(classifySaveFailure([denied], 'cache write denied:')).toEqual({
      outcome: 'skipped',
      message: denied.text,
    });
  });

  it('an HTTP 5xx the library logs as an error is an outage whatever its text', () => {
    const line: LibraryLine = { kind: 'error', text: 'Failed to save: Bad Gateway' };
    expect(classifySaveFailure([line]).outcome).toBe('unavailable');
  });

  it('a cache-mode that forbids writes is a skip; anything else is a failure with the library text', () => {
    expect(
      classifySaveFailure([
        info("Cache save skipped: the effective cache-mode 'read' does not permit writes."),
      ]).outcome,
    ).toBe('skipped');
    expect(classifySaveFailure([warning('Failed to save: tar exited with 2')])).toEqual({
      outcome: 'failed',
      message: 'Failed to save: tar exited with 2',
    });
    expect(classifySaveFailure([]).outcome).toBe('failed');
  });
});

describe('the main -> post plan', () => {
  const saved: Record<string, string | undefined> = {};
  const vars = ['ACTIONS_CACHE_SERVICE_V2', 'ACTIONS_RESULTS_URL', 'ACTIONS_CACHE_URL', 'IMAGE_CI_CACHE_DIR'];
  beforeEach(() => {
    for (const v of vars) {
      saved[v] = process.env[v];
      delete process.env[v];
    }
  });
  afterEach(() => {
    for (const v of vars) if (saved[v] !== undefined) process.env[v] = saved[v];
  });

  it('runs a planned save once; without a plan post does nothing', async () => {
    const { host, log } = cliHost();
    expect(await runPlannedSave(host)).toBeUndefined();
    planCacheSave(host, { paths: ['/nonexistent/ici-path'], key: 'k-1' });
    expect(await runPlannedSave(host)).toEqual({
      outcome: 'skipped',
      message: 'no cache backend is configured',
    });
    expect(await runPlannedSave(host)).toBeUndefined();
    expect(log.join('\n')).toMatch(/Cache save skipped for k-1/);
  });

  it('refuses to plan a key the service would refuse', () => {
    const { host } = cliHost();
    expect(() => planCacheSave(host, { paths: ['/x'], key: 'a,b' })).toThrow(/comma/);
  });
});
