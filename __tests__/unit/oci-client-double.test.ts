/**
 * Client behaviours docker-registry 2.8 never shows (it sends absolute Locations and answers mounts with 201),
 * checked against a small in-process HTTP double that records what the client sent.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RegistryClient } from '../../src/core/oci/client.js';
import { makeTestCa } from '../support/test-ca.js';

type Handler = (req: IncomingMessage, body: Buffer, res: ServerResponse) => void;
interface Seen {
  method: string;
  url: string;
  auth?: string;
  bytes: number;
}

const servers: Server[] = [];
let dir: string | undefined;
afterEach(async () => {
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});

async function double(handler: Handler): Promise<{ host: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({ method: req.method!, url: req.url!, auth: req.headers.authorization, bytes: body.length });
      handler(req, body, res);
    });
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { host: `127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

function blob(content: string) {
  dir = mkdtempSync(join(tmpdir(), 'ici-double-'));
  const path = join(dir, 'blob');
  writeFileSync(path, content);
  return {
    path,
    size: content.length,
    digest: `sha256:${createHash('sha256').update(content).digest('hex')}`,
  };
}

const client = (host: string, extra = {}) =>
  new RegistryClient({ registry: host, insecure: true, retryBaseDelayMs: 5, timeoutMs: 5000, ...extra });

describe('RegistryClient protocol details (in-process double)', () => {
  it('resolves relative Locations against the request URL and keeps their query through chunked upload', async () => {
    const b = blob('0123456789abcdefghij');
    const { host, seen } = await double((req, _body, res) => {
      const url = new URL(req.url!, 'http://x');
      if (req.method === 'GET') return void res.writeHead(200).end('{}');
      if (req.method === 'POST') return void res.writeHead(202, { location: 'uploads/u1?_state=s0' }).end();
      if (req.method === 'PATCH') {
        const n = Number(url.searchParams.get('_state')!.slice(1)) + 1;
        return void res.writeHead(202, { location: `/v2/r/blobs/uploads/u1?_state=s${n}` }).end();
      }
      res.writeHead(201, { 'docker-content-digest': url.searchParams.get('digest')! }).end();
    });
    await client(host).uploadBlob('r', b, { chunkSize: 8 });
    expect(seen.map((s) => `${s.method} ${s.url} ${s.bytes}`)).toEqual([
      'POST /v2/r/blobs/uploads/ 0',
      'PATCH /v2/r/blobs/uploads/uploads/u1?_state=s0 8',
      'PATCH /v2/r/blobs/uploads/u1?_state=s1 8',
      'PATCH /v2/r/blobs/uploads/u1?_state=s2 4',
      `PUT /v2/r/blobs/uploads/u1?_state=s3&digest=${encodeURIComponent(b.digest)} 0`,
    ]);
  });

  it('goes on after a chunk PATCH answered 201 instead of 202 (as ECR answers them)', async () => {
    const b = blob('0123456789abcdefghij');
    const { host, seen } = await double((req, _body, res) => {
      const url = new URL(req.url!, 'http://x');
      if (req.method === 'GET') return void res.writeHead(200).end('{}');
      if (req.method === 'POST') return void res.writeHead(202, { location: '/v2/r/blobs/uploads/u1' }).end();
      if (req.method === 'PATCH')
        return void res.writeHead(201, { location: '/v2/r/blobs/uploads/u1' }).end();
      res.writeHead(201, { 'docker-content-digest': url.searchParams.get('digest')! }).end();
    });
    const c = client(host);
    await c.uploadBlob('r', b, { chunkSize: 8 });
    expect(seen.map((s) => `${s.method} ${s.bytes}`)).toEqual([
      'POST 0',
      'PATCH 8',
      'PATCH 8',
      'PATCH 4',
      'PUT 0',
    ]);
    expect(c.stats.retries).toBe(0);
  });

  it('continues the upload in the session a mount answered with 202, and uploads when a mount fails', async () => {
    const b = blob('payload');
    let mounts = 0;
    const { host, seen } = await double((req, _body, res) => {
      if (req.method === 'GET') return void res.writeHead(200).end('{}');
      if (req.method === 'POST' && req.url!.includes('mount=')) {
        mounts++;
        if (mounts === 1) return void res.writeHead(202, { location: '/v2/r/blobs/uploads/m1' }).end();
        return void res.writeHead(404).end('{"errors":[{"code":"BLOB_UNKNOWN"}]}');
      }
      if (req.method === 'POST')
        return void res.writeHead(202, { location: '/v2/r/blobs/uploads/fresh' }).end();
      res.writeHead(201).end();
    });
    const c = client(host);
    const first = await c.mountBlob('r', b.digest, 'other');
    expect(first.mounted).toBe(false);
    await c.uploadBlob('r', b, { location: first.mounted ? undefined : first.location });
    expect(await c.mountBlob('r', b.digest, 'other')).toEqual({ mounted: false, refused: false }); // a 404 is no refusal of rights;
    const puts = seen.filter((s) => s.method === 'PUT').map((s) => s.url.split('?')[0]);
    expect(puts).toEqual(['/v2/r/blobs/uploads/m1']);
  });

  it('refuses an upload Location that leaves https for plain http, and sends nothing there', async () => {
    const b = blob('payload');
    const plain = await double((_req, _body, res) => void res.writeHead(201).end());
    const ca = makeTestCa(dir!);
    const server = createHttpsServer(
      { cert: readFileSync(ca.serverCert), key: readFileSync(ca.serverKey) },
      (req, res) => {
        req.resume();
        req.on('end', () => {
          if (!req.headers.authorization) {
            return void res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' }).end();
          }
          res.writeHead(202, { location: `http://${plain.host}/upload/u1` }).end();
        });
      },
    );
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const c = new RegistryClient({
      registry: `127.0.0.1:${(server.address() as AddressInfo).port}`,
      tlsVerify: false,
      credentials: { username: 'alice', password: 'S3cretPassw0rd' },
      retryBaseDelayMs: 5,
      timeoutMs: 5000,
    });
    const error = await c.uploadBlob('team/app', b).catch((e: unknown) => e);
    await c.close();
    expect(String(error)).toMatch(/sent the upload to http:\/\/127\.0\.0\.1:\d+, leaving https; refused/);
    expect(plain.seen).toEqual([]);
  });

  it("keeps an http upload Location on the registry's own host and port on https (a proxy ending TLS in front of it)", async () => {
    const b = blob('payload');
    const ca = makeTestCa(dir!);
    const seen: string[] = [];
    const server = createHttpsServer(
      { cert: readFileSync(ca.serverCert), key: readFileSync(ca.serverKey) },
      (req, res) => {
        req.resume();
        req.on('end', () => {
          seen.push(`${req.method} ${req.url} ${req.headers.authorization ? 'auth' : 'anonymous'}`);
          if (!req.headers.authorization) {
            return void res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' }).end();
          }
          if (req.method === 'GET') return void res.writeHead(200).end('{}');
          // As distribution builds it from the plain-http request a TLS-ending proxy passed on.
          const own = `http://${req.headers.host}/v2/team/app/blobs/uploads/u1?_state=s1`;
          if (req.method === 'POST') return void res.writeHead(202, { location: own }).end();
          res.writeHead(201).end();
        });
      },
    );
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const c = new RegistryClient({
      registry: `127.0.0.1:${(server.address() as AddressInfo).port}`,
      tlsVerify: false,
      credentials: { username: 'alice', password: 'S3cretPassw0rd' },
      retryBaseDelayMs: 5,
      timeoutMs: 5000,
    });
    await c.uploadBlob('team/app', b);
    await c.close();
    expect(seen.filter((s) => s.startsWith('PUT'))).toEqual([
      `PUT /v2/team/app/blobs/uploads/u1?_state=s1&digest=${encodeURIComponent(b.digest)} auth`,
    ]);
  });

  it('refuses a token realm that is not an http(s) URL at once, without retries', async () => {
    const { host, seen } = await double((_req, _body, res) => {
      res.writeHead(401, { 'www-authenticate': 'Bearer realm="file:///etc/passwd",service="svc"' }).end();
    });
    const c = client(host, { credentials: { username: 'alice', password: 'pw-123456' } });
    const error = await c.headBlob('r', `sha256:${'a'.repeat(64)}`).catch((e: unknown) => e);
    await c.close();
    expect(String(error)).toContain(
      `${host} names a token server that is not an http(s) URL: 'file:///etc/passwd'.`,
    );
    expect(seen).toHaveLength(1);
    expect(c.stats.retries).toBe(0);
  });

  it('waits as Retry-After says and retries 503s, then gives up with the OCI error', async () => {
    let heads = 0;
    const { host } = await double((req, _body, res) => {
      if (req.url === '/v2/') return void res.writeHead(200).end('{}');
      heads++;
      if (heads === 1) return void res.writeHead(429, { 'retry-after': '0' }).end();
      if (heads === 2) return void res.writeHead(503).end();
      res.writeHead(200, { 'content-length': '7' }).end();
    });
    const c = client(host);
    expect(await c.headBlob('r', `sha256:${'a'.repeat(64)}`)).toEqual({ size: 7 });
    expect(c.stats.retries).toBe(2);

    const { host: broken } = await double((req, _body, res) => {
      if (req.url === '/v2/') return void res.writeHead(200).end('{}');
      res
        .writeHead(503, { 'content-type': 'application/json' })
        .end('{"errors":[{"code":"UNAVAILABLE","message":"down"}]}');
    });
    await expect(client(broken, { retries: 2 }).getManifest('r', 'v1')).rejects.toThrow(
      'GET manifest r:v1: HTTP 503 UNAVAILABLE: down',
    );
  });

  it('fetches a new token when the registry asks for a scope the cached one lacks', async () => {
    const tokens: string[] = [];
    let issued = 0;
    const { host, seen } = await double((req, _body, res) => {
      const url = new URL(req.url!, 'http://x');
      const challenge = `Bearer realm="http://${req.headers.host}/token",service="svc"`;
      if (url.pathname === '/token') {
        issued++;
        return void res
          .writeHead(200)
          .end(JSON.stringify({ token: `t${issued}:${url.searchParams.getAll('scope').join('+')}` }));
      }
      if (!req.headers.authorization) return void res.writeHead(401, { 'www-authenticate': challenge }).end();
      // The first token is refused once, as an expired one would be.
      if (req.headers.authorization?.startsWith('Bearer t1:')) {
        return void res.writeHead(401, { 'www-authenticate': `${challenge},error="invalid_token"` }).end();
      }
      res.writeHead(404).end();
    });
    const c = client(host, { onToken: (t: string) => tokens.push(t) });
    expect(await c.headBlob('a/b', `sha256:${'b'.repeat(64)}`)).toBeUndefined();
    expect(tokens).toEqual(['t1:repository:a/b:pull', 't2:repository:a/b:pull']);
    expect(await c.headManifest('a/b', 'v1')).toBeUndefined();
    expect(tokens).toHaveLength(2);
    const blobHeads = seen.filter((s) => s.url.startsWith('/v2/a/b/'));
    expect(blobHeads.map((s) => s.auth)).toEqual([
      undefined,
      'Bearer t1:repository:a/b:pull',
      'Bearer t2:repository:a/b:pull',
      'Bearer t2:repository:a/b:pull',
    ]);
  });

  it('continues the same upload session after a token is refused mid-upload, from the offset the registry reports', async () => {
    const b = blob('0123456789abcdefghijklmnopqrstuvwxyz');
    let issued = 0;
    let stored = Buffer.alloc(0);
    let patches = 0;
    const { host, seen } = await double((req, body, res) => {
      const url = new URL(req.url!, 'http://x');
      const challenge = `Bearer realm="http://${req.headers.host}/token",service="svc"`;
      if (url.pathname === '/token')
        return void res.writeHead(200).end(JSON.stringify({ token: `t${++issued}`, expires_in: 300 }));
      if (!req.headers.authorization) return void res.writeHead(401, { 'www-authenticate': challenge }).end();
      // The first token dies early, while the second chunk is on its way: a registry trusts its own clock.
      if (req.method === 'PATCH' && ++patches === 2) {
        return void res.writeHead(401, { 'www-authenticate': `${challenge},error="invalid_token"` }).end();
      }
      if (req.method === 'POST') return void res.writeHead(202, { location: '/v2/r/blobs/uploads/s1' }).end();
      if (req.method === 'GET') {
        return void res
          .writeHead(204, { range: `0-${stored.length - 1}`, location: '/v2/r/blobs/uploads/s1' })
          .end();
      }
      stored = Buffer.concat([stored, body]);
      if (req.method === 'PATCH')
        return void res.writeHead(202, { location: '/v2/r/blobs/uploads/s1' }).end();
      const ok =
        createHash('sha256').update(stored).digest('hex') === url.searchParams.get('digest')!.slice(7);
      res.writeHead(ok ? 201 : 400).end();
    });
    const c = client(host);
    await c.uploadBlob('r', b, { chunkSize: 10 });
    const upload = seen.filter((s) => s.url.startsWith('/v2/r/blobs/uploads/'));
    expect(upload.map((s) => `${s.method} ${s.url.split('?')[0]} ${s.auth} ${s.bytes}`)).toEqual([
      'POST /v2/r/blobs/uploads/ undefined 0',
      'POST /v2/r/blobs/uploads/ Bearer t1 0',
      'PATCH /v2/r/blobs/uploads/s1 Bearer t1 10',
      'PATCH /v2/r/blobs/uploads/s1 Bearer t1 10',
      'GET /v2/r/blobs/uploads/s1 Bearer t2 0',
      'PATCH /v2/r/blobs/uploads/s1 Bearer t2 10',
      'PATCH /v2/r/blobs/uploads/s1 Bearer t2 10',
      'PATCH /v2/r/blobs/uploads/s1 Bearer t2 6',
      'PUT /v2/r/blobs/uploads/s1 Bearer t2 0',
    ]);
    expect(c.stats.bytesUploaded).toBe(b.size);
  });

  describe('token fetches share one retry budget and name the token server', () => {
    /** A registry double whose token endpoint does what `token` says; counts token requests. */
    async function tokenRegistry(token: (res: ServerResponse) => void) {
      let tokenRequests = 0;
      const { host } = await double((req, _body, res) => {
        if (req.url!.startsWith('/token')) {
          tokenRequests++;
          return token(res);
        }
        if (!req.headers.authorization) {
          return void res
            .writeHead(401, {
              'www-authenticate': `Bearer realm="http://${req.headers.host}/token",service="svc"`,
            })
            .end();
        }
        res.writeHead(404).end();
      });
      return { host, tokenRequests: () => tokenRequests };
    }
    const digests = ['a', 'b', 'c', 'd'].map((c) => `sha256:${c.repeat(64)}`);

    it('a token server that always answers 503: six token requests in all, however many requests wait', async () => {
      const registry = await tokenRegistry((res) => void res.writeHead(503).end());
      const c = client(registry.host);
      const results = await Promise.allSettled(digests.map((d) => c.headBlob('a/b', d)));
      expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected', 'rejected', 'rejected']);
      expect(registry.tokenRequests()).toBe(6);
      expect(String((results[0] as PromiseRejectedResult).reason)).toContain(
        `get a token from http://${registry.host}/token: HTTP 503`,
      );
    });

    it('a token server that never answers costs the budget of timeouts, not more', async () => {
      const registry = await tokenRegistry(() => undefined);
      const c = client(registry.host, { timeoutMs: 300 });
      const results = await Promise.allSettled(digests.map((d) => c.headBlob('a/b', d)));
      expect(registry.tokenRequests()).toBe(6);
      expect(String((results[3] as PromiseRejectedResult).reason)).toMatch(
        new RegExp(`get a token from http://${registry.host}/token: no .*within 0.3 s`),
      );
    });

    it('an HTML answer from the token server is reported with its URL', async () => {
      const registry = await tokenRegistry(
        (res) =>
          void res
            .writeHead(200, { 'content-type': 'text/html' })
            .end('<html><body>Sign in\n::set-output name=x::y</body></html>'),
      );
      const error = await client(registry.host)
        .headBlob('a/b', digests[0]!)
        .catch((e: unknown) => e);
      expect(String(error)).toContain(
        `get a token from http://${registry.host}/token: the token server answered text/html, not JSON`,
      );
      expect(String(error)).not.toContain('\n');
      expect(registry.tokenRequests()).toBe(1);
    });
  });

  it('a registry that always answers 503 to an upload start gets six POSTs for the blob, no more', async () => {
    const b = blob('payload');
    const { host, seen } = await double((req, _body, res) => {
      if (req.method === 'POST') return void res.writeHead(503).end();
      res.writeHead(404).end();
    });
    const c = client(host);
    await expect(c.uploadBlob('r', b)).rejects.toThrow('start upload to r: HTTP 503');
    expect(seen.filter((s) => s.method === 'POST')).toHaveLength(6);
    expect(c.stats.retries).toBe(5);
  });

  it('answers a challenge list (Basic before Bearer) with the bearer flow', async () => {
    const { host, seen } = await double((req, _body, res) => {
      if (req.url!.startsWith('/token')) return void res.writeHead(200).end('{"token":"tok"}');
      if (req.headers.authorization !== 'Bearer tok') {
        return void res
          .writeHead(401, {
            'www-authenticate': `Basic realm="a, b", Bearer realm="http://${req.headers.host}/token",service="svc"`,
          })
          .end();
      }
      res.writeHead(200, { 'content-length': '3' }).end();
    });
    const c = client(host, { credentials: { username: 'u', password: 'p' } });
    expect(await c.headBlob('a/b', `sha256:${'e'.repeat(64)}`)).toEqual({ size: 3 });
    expect(seen.map((s) => s.url.split('?')[0])).toEqual([
      '/v2/a/b/blobs/sha256:' + 'e'.repeat(64),
      '/token',
      '/v2/a/b/blobs/sha256:' + 'e'.repeat(64),
    ]);
  });

  it('a blob GET answered 503 every time is tried six times in all, then fails without a file', async () => {
    dir = mkdtempSync(join(tmpdir(), 'ici-double-'));
    const { host, seen } = await double((_req, _body, res) => void res.writeHead(503).end());
    const dest = join(dir, 'blob');
    await expect(client(host).downloadBlob('r', `sha256:${'f'.repeat(64)}`, dest)).rejects.toThrow(
      'HTTP 503',
    );
    expect(seen.filter((s) => s.method === 'GET')).toHaveLength(6);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('follows a blob redirect to storage without sending the registry credentials there', async () => {
    const content = 'stored elsewhere';
    const digest = `sha256:${createHash('sha256').update(content).digest('hex')}`;
    const storage = await double((_req, _body, res) => void res.writeHead(200).end(content));
    const { host } = await double((req, _body, res) => {
      if (!req.headers.authorization)
        return void res.writeHead(401, { 'www-authenticate': 'Basic realm="r"' }).end();
      res.writeHead(307, { location: `http://${storage.host}/blob?sig=1` }).end();
    });
    dir = mkdtempSync(join(tmpdir(), 'ici-double-'));
    const c = client(host, { credentials: { username: 'u', password: 'p' } });
    expect(await c.downloadBlob('r', digest, join(dir, 'b'), { size: content.length })).toEqual({
      size: content.length,
    });
    expect(storage.seen.map((s) => [s.url, s.auth])).toEqual([['/blob?sig=1', undefined]]);
  });

  it('a 403 insufficient_scope names the user and the scope the registry asked for', async () => {
    const { host } = await double((req, _body, res) => {
      const challenge = `Bearer realm="http://${req.headers.host}/token",service="svc"`;
      if (req.url!.startsWith('/token')) return void res.writeHead(200).end('{"token":"opaque"}');
      if (!req.headers.authorization) return void res.writeHead(401, { 'www-authenticate': challenge }).end();
      res
        .writeHead(403, {
          'www-authenticate': `${challenge},scope="repository:a/b:pull,push",error="insufficient_scope"`,
        })
        .end();
    });
    const c = client(host, { credentials: { username: 'ci-bot', password: 'pw' } });
    const error = await c
      .putManifest('a/b', 'v1', Buffer.from('{}'), 'application/json')
      .catch((e: unknown) => e);
    expect(String(error)).toContain(
      "PUT manifest a/b:v1: user 'ci-bot' lacks a right it needs on repository:a/b:pull,push (the registry answered insufficient_scope)",
    );
  });
});
