import { describe, expect, it } from '@jest/globals';
import { parseChallenge } from '../../src/core/oci/challenge.js';
import { parseOciError } from '../../src/core/oci/errors.js';
import { backoffDelay, isRetryableStatus, parseRetryAfter } from '../../src/core/oci/retry.js';
import { parseImageSource, formatImageSource } from '../../src/core/oci/source.js';
import { mapLimit } from '../../src/core/oci/pool.js';

describe('WWW-Authenticate', () => {
  it('parses a bearer challenge with quoted params', () => {
    expect(
      parseChallenge(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"',
      ),
    ).toEqual({
      scheme: 'bearer',
      params: {
        realm: 'https://auth.example/token',
        service: 'registry.example',
        scope: 'repository:a/b:pull,push',
      },
    });
  });
  it('parses basic and unquoted params, and nothing from an empty header', () => {
    expect(parseChallenge('Basic realm=test-realm')).toEqual({
      scheme: 'basic',
      params: { realm: 'test-realm' },
    });
    expect(parseChallenge(null)).toBeUndefined();
  });
});

describe('retry policy', () => {
  it('retries rate limits and transient server errors only', () => {
    expect([429, 500, 502, 503, 504, 408].every(isRetryableStatus)).toBe(true);
    expect([400, 401, 403, 404, 501].some(isRetryableStatus)).toBe(false);
  });
  it('reads Retry-After as seconds or a date', () => {
    expect(parseRetryAfter('3')).toBe(3000);
    expect(parseRetryAfter(new Date(10_000).toUTCString(), 4_000)).toBe(6_000);
    expect(parseRetryAfter('soon')).toBeUndefined();
    expect(parseRetryAfter(null)).toBeUndefined();
  });
  it('grows exponentially, is capped, and lets Retry-After win', () => {
    const policy = { retries: 5, baseDelayMs: 100, maxDelayMs: 1000 };
    expect(backoffDelay(0, policy)).toBeLessThanOrEqual(100);
    expect(backoffDelay(3, policy)).toBeGreaterThanOrEqual(400);
    expect(backoffDelay(10, policy)).toBe(1000);
    expect(backoffDelay(0, policy, 700)).toBe(700);
    expect(backoffDelay(0, policy, 60_000)).toBe(1000);
  });
  it('extracts the OCI error code and message', () => {
    expect(parseOciError('{"errors":[{"code":"DENIED","message":"no push access"}]}')).toEqual({
      code: 'DENIED',
      message: 'no push access',
    });
    expect(parseOciError('<html>')).toEqual({});
  });
});

describe('image sources', () => {
  it.each([
    ['oci:/tmp/l', { transport: 'oci', location: '/tmp/l' }],
    ['oci:/tmp/l:v1', { transport: 'oci', location: '/tmp/l', ref: 'v1' }],
    ['oci-archive:/tmp/a.tar:rel', { transport: 'oci-archive', location: '/tmp/a.tar', ref: 'rel' }],
    ['docker-archive:/tmp/d.tar', { transport: 'docker-archive', location: '/tmp/d.tar' }],
    ['docker://quay.io/a/b:1', { transport: 'docker', location: 'quay.io/a/b:1' }],
    ['containers-storage:localhost/x', { transport: 'containers-storage', location: 'localhost/x' }],
    ['localhost/x:1', { transport: 'containers-storage', location: 'localhost/x:1' }],
    ['busybox:latest', { transport: 'containers-storage', location: 'busybox:latest' }],
  ])('%s', (text, spec) => {
    expect(parseImageSource(text)).toEqual(spec);
    const explicit = spec.transport === 'containers-storage' ? `containers-storage:${spec.location}` : text;
    expect(formatImageSource(parseImageSource(text))).toBe(explicit);
  });
  it.each([
    ['dir:/tmp/x', /unknown transport 'dir:'/],
    ['docker-daemon:./x', /unknown transport 'docker-daemon:'/],
    ['oci:', /names no image/],
    ['docker://', /names no image|empty/],
  ])('refuses %s', (text, message) => {
    expect(() => parseImageSource(text)).toThrow(message);
  });
});

describe('mapLimit', () => {
  it('keeps at most `limit` in flight and returns results in order', async () => {
    let inFlight = 0;
    let peak = 0;
    const out = await mapLimit([5, 1, 4, 2, 3], 2, async (n) => {
      inFlight++;
      peak = Math.max(peak, inFlight);
      await new Promise((r) => setTimeout(r, n));
      inFlight--;
      return n * 10;
    });
    expect(out).toEqual([50, 10, 40, 20, 30]);
    expect(peak).toBe(2);
  });
  it('rejects with the first failure', async () => {
    await expect(mapLimit([1, 2], 2, async (n) => Promise.reject(new Error(`no ${n}`)))).rejects.toThrow(
      'no 1',
    );
  });
});
