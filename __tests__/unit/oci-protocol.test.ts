import { registerSecret } from '../../src/core/secrets.js';
import { externalText } from '../../src/core/oci/response.js';
import { describe, expect, it } from '@jest/globals';
import { parseChallenges, preferredChallenge } from '../../src/core/oci/challenge.js';
import { parseOciError } from '../../src/core/oci/errors.js';
import {
  backoffDelay,
  DEFAULT_RETRY,
  isRetryableStatus,
  parseRetryAfter,
  RetryBudget,
  serverWait,
  TransientError,
} from '../../src/core/oci/retry.js';
import { confirmedTags } from '../../src/core/oci/upload.js';
import { parseImageSource, formatImageSource } from '../../src/actions/push-multi-tag/source.js';
import { boundedRunner, mapLimit } from '../../src/core/pool.js';

describe('WWW-Authenticate (RFC 7235 challenge lists)', () => {
  const bearer = {
    scheme: 'bearer',
    params: {
      realm: 'https://auth.example/token',
      service: 'registry.example',
      scope: 'repository:a/b:pull,push',
    },
  };
  it('parses a bearer challenge with quoted params holding commas', () => {
    expect(
      parseChallenges(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"',
      ),
    ).toEqual([bearer]);
  });
  it.each([
    [
      'Bearer then Basic',
      'Bearer realm="https://auth.example/token", service="registry.example",scope="repository:a/b:pull,push", Basic realm="x, y"',
    ],
    [
      'Basic then Bearer',
      'Basic realm="x, y", Bearer realm="https://auth.example/token",service=registry.example,scope="repository:a/b:pull,push"',
    ],
  ])('parses two challenges in one header (%s) and prefers Bearer', (_name, header) => {
    const list = parseChallenges(header);
    expect(list).toHaveLength(2);
    expect(list).toContainEqual({ scheme: 'basic', params: { realm: 'x, y' } });
    expect(preferredChallenge(list)).toEqual(bearer);
  });
  it('joins repeated headers, skips token68 and unknown schemes, unescapes quoted pairs', () => {
    const list = parseChallenges(['Negotiate abc==', 'Basic realm="say \\"hi\\""', 'Custom']);
    expect(list).toEqual([
      { scheme: 'negotiate', params: {} },
      { scheme: 'basic', params: { realm: 'say "hi"' } },
      { scheme: 'custom', params: {} },
    ]);
    expect(preferredChallenge(list)?.scheme).toBe('basic');
  });
  it('parses basic with unquoted params, and nothing from an empty header', () => {
    expect(parseChallenges('Basic realm=test-realm')).toEqual([
      { scheme: 'basic', params: { realm: 'test-realm' } },
    ]);
    expect(parseChallenges(null)).toEqual([]);
    expect(preferredChallenge(parseChallenges('Bearer service="no realm"'))).toBeUndefined();
  });
});

describe('OCI-Tag confirmations', () => {
  it('reads one comma-joined header or one header per tag, and only tags that were asked for', () => {
    expect(confirmedTags(['a, b,c'], ['a', 'b', 'c', 'd'])).toEqual(['a', 'b', 'c']);
    expect(confirmedTags(['a', 'b', 'zzz'], ['a', 'b', 'c'])).toEqual(['a', 'b']);
    expect(confirmedTags([], ['a'])).toEqual([]);
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
  it('reads no date into Retry-After garbage that Date.parse takes for a day in 2001 (a wait of 0: retried at once)', () => {
    expect(parseRetryAfter('1.5')).toBe(1500);
    for (const garbage of ['-1', '5, 5', '+3', '1 2', 'Infinity'])
      expect(parseRetryAfter(garbage)).toBeUndefined();
    // The obsolete RFC 850 form still counts (RFC 9110 5.6.7).
    expect(parseRetryAfter('Thursday, 01-Jan-70 00:00:10 GMT', 4_000)).toBe(6_000);
  });
  it('grows exponentially and is capped; Retry-After wins and is honoured up to 120 s', () => {
    const policy = { retries: 5, baseDelayMs: 100, maxDelayMs: 1000, maxRetryAfterMs: 120_000 };
    expect(backoffDelay(0, policy)).toBeLessThanOrEqual(100);
    expect(backoffDelay(3, policy)).toBeGreaterThanOrEqual(400);
    expect(backoffDelay(10, policy)).toBe(1000);
    expect(backoffDelay(0, policy, 700)).toBe(700);
    expect(backoffDelay(0, DEFAULT_RETRY, 30_000)).toBe(30_000);
    expect(backoffDelay(0, DEFAULT_RETRY, 600_000)).toBe(120_000);
  });
  it('tells a wait the server set, and what it asked when that was past the cap; no line for a wait of its own or of 0', async () => {
    const told: (string | undefined)[] = [];
    const budget = new RetryBudget(
      { ...DEFAULT_RETRY, maxRetryAfterMs: 5, baseDelayMs: 1 },
      (error, waitMs) => told.push(serverWait(error, waitMs)),
    );
    await budget.next(new TransientError('PUT manifest a:b: HTTP 429 Too Many Requests', 429, 3_600_000));
    await budget.next(new TransientError('PUT manifest a:b: HTTP 503 Service Unavailable', 503));
    await budget.next(new TransientError('upload: the registry asked for new credentials.', 401, 0));
    expect(told).toEqual([
      'PUT manifest a:b: HTTP 429 Too Many Requests; waiting 0 s as the registry asked (Retry-After) (it asked for 3600 s, more than the cap).',
      undefined,
      undefined,
    ]);
  });
  it('a budget allows retries + 1 tries in all, and marks the failure it gives up on', async () => {
    let retries = 0;
    const budget = new RetryBudget({ ...DEFAULT_RETRY, retries: 2, baseDelayMs: 1 }, () => retries++);
    const failure = new TransientError('x', 503);
    await budget.next(failure);
    await budget.next(failure);
    await expect(budget.next(failure)).rejects.toBe(failure);
    expect(failure.exhausted).toBe(true);
    expect(retries).toBe(2);
    // An enclosing operation with budget left does not start another round for an exhausted failure.
    await expect(new RetryBudget(DEFAULT_RETRY, () => retries++).next(failure)).rejects.toBe(failure);
    expect(retries).toBe(2);
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
    // The reference may hold a registry port and a tag: the path ends at the first colon, as in containers/image.
    [
      'docker-archive:/tmp/d.tar:registry.example:5000/org/app:v1',
      { transport: 'docker-archive', location: '/tmp/d.tar', ref: 'registry.example:5000/org/app:v1' },
    ],
    [
      'docker-archive:/tmp/d.tar:app:v1',
      { transport: 'docker-archive', location: '/tmp/d.tar', ref: 'app:v1' },
    ],
    ['docker-archive:/tmp/d.tar:@1', { transport: 'docker-archive', location: '/tmp/d.tar', ref: '@1' }],
    ['docker://quay.io/a/b:1', { transport: 'docker', location: 'quay.io/a/b:1' }],
    ['containers-storage:localhost/x', { transport: 'containers-storage', location: 'localhost/x' }],
    ['docker-daemon:localhost/x:1', { transport: 'docker-daemon', location: 'localhost/x:1' }],
    [
      `docker-daemon:sha256:${'a'.repeat(64)}`,
      { transport: 'docker-daemon', location: `sha256:${'a'.repeat(64)}` },
    ],
    ['localhost/x:1', { transport: 'containers-storage', location: 'localhost/x:1' }],
    ['busybox:latest', { transport: 'containers-storage', location: 'busybox:latest' }],
  ])('%s', (text, spec) => {
    expect(parseImageSource(text)).toEqual(spec);
    const explicit = spec.transport === 'containers-storage' ? `containers-storage:${spec.location}` : text;
    expect(formatImageSource(parseImageSource(text))).toBe(explicit);
  });
  it.each([
    ['dir:/tmp/x', /the dir: transport is known but not supported as a push source; convert it first/],
    ['sif:/tmp/x.sif', /the sif: transport is known but not supported/],
    ['tarball:/tmp/x.tar', /the tarball: transport is known but not supported/],
    ['nosuch:/tmp/x', /unknown transport 'nosuch:'/],
    ['docker-daemon:./x', /invalid|reference/],
    ['oci:', /names no image/],
    ['docker://', /names no image|empty/],
    ['./layout', "'./layout' is a path, not an image name: write oci:./layout for an OCI layout directory"],
    ['/tmp/x/layout', "'/tmp/x/layout' is a path, not an image name: write oci:/tmp/x/layout for an OCI"],
    ['layout/', "'layout/' is a path, not an image name"],
    ['image.tar', 'or oci-archive:image.tar / docker-archive:image.tar for a tar file.'],
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

describe('boundedRunner', () => {
  it('keeps at most `limit` in flight whoever calls it, and starts nothing after the first failure', async () => {
    const run = boundedRunner(2);
    let inFlight = 0;
    let peak = 0;
    const started: number[] = [];
    const task = (n: number) => () => {
      started.push(n);
      inFlight++;
      peak = Math.max(peak, inFlight);
      return new Promise<number>((resolve, reject) =>
        setTimeout(() => {
          inFlight--;
          if (n === 3) reject(new Error('no 3'));
          else resolve(n);
        }, 5),
      );
    };
    const all = [1, 2, 3, 4, 5, 6].map((n) => run(task(n)));
    const settled = await Promise.allSettled(all);
    expect(peak).toBe(2);
    expect(settled.slice(0, 2).map((s) => s.status)).toEqual(['fulfilled', 'fulfilled']);
    // 3 failed; 4 was already running beside it; 5 and 6 never started.
    expect(started).toEqual([1, 2, 3, 4]);
    expect(settled.slice(4).map((s) => (s as PromiseRejectedResult).reason)).toEqual([
      new Error('no 3'),
      new Error('no 3'),
    ]);
  });
});

describe('server text in messages', () => {
  it('takes registered secrets out before cutting, so no prefix of one survives the cut', () => {
    // An error body echoing the request's Authorization header, long enough that the cut falls inside it.
    const basic = Buffer.from('alice:Tok3n-x7Q9x7Q9x7Q9x7Q9x7Q9x7Q9', 'utf8').toString('base64');
    registerSecret(basic);
    const body = `${'x'.repeat(150)} you sent Authorization: Basic ${basic}`;
    const text = externalText(body);
    expect(text).toContain('Basic ***');
    expect(text).not.toContain(basic.slice(0, 8));
    expect(externalText(body, 200).length).toBeLessThanOrEqual(201);
  });

  it('drops what would make a log line read differently from its bytes: C1 controls, bidi overrides, zero-width', () => {
    // U+202E shows 'exe.gnp' as 'png.exe' (Trojan Source); U+009B is a one-byte CSI to some terminals.
    const text = externalText('a\u202egnp.exe\u202c b\u2066c\u2069\u009b31m d\u200be\ufeff f\u061cg\u200f');
    expect(text).toBe('agnp.exe bc 31m de fg');
    // Taking them out cannot put back together a secret they were hiding in.
    registerSecret('Tok3n-bidi-x7Q9x7Q9');
    expect(externalText('echo Tok3n-bidi-\u200bx7Q9x7Q9')).toBe('echo ***');
  });
});
