/**
 * The registry transport against a real docker-registry (open, and with token auth backed by a real token
 * server), with fault relays in front for what a slow or hostile world does: throttled and cut downloads,
 * endless bodies, rewritten challenges, a token that dies mid-upload, a user without the push right.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import {
  mkdirSync,
  symlinkSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RegistryClient } from '../../src/core/oci/client.js';
import { digestFile, digestOf } from '../../src/core/oci/digest.js';
import { MediaType } from '../../src/core/oci/media-types.js';
import { registerSecret } from '../../src/core/secrets.js';
import { generateLayout, type BlobInfo, type GeneratedLayout } from '../support/oci-layout.js';
import { startProxy, type CountingProxy, type ProxyOptions } from '../support/proxy.js';
import { startRegistry, type RegistryService } from '../support/registry.js';
import { makeTestCa } from '../support/test-ca.js';
import { testClient } from '../support/oci-client.js';

let work: string;
let layout: GeneratedLayout;
let blob: BlobInfo & { path: string };
const relays: CountingProxy[] = [];

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'ici-transport-'));
  layout = generateLayout(join(work, 'layout'), { layers: [600_000] });
  const largest = layout.blobs.reduce((a, b) => (b.size > a.size ? b : a));
  blob = { ...largest, path: join(layout.dir, 'blobs', 'sha256', largest.digest.slice(7)) };
});
afterAll(async () => {
  await Promise.all(relays.splice(0).map((r) => r.stop()));
  rmSync(work, { recursive: true, force: true });
});

async function relay(options: ProxyOptions): Promise<CountingProxy> {
  const r = await startProxy(options);
  relays.push(r);
  return r;
}

const client = testClient;

const blobGets = (r: CountingProxy) => r.records.filter((rec) => rec.kind === 'blob-get');

describe('downloads', () => {
  let registry: RegistryService;
  beforeAll(async () => {
    registry = await startRegistry();
    await client(registry.host).uploadBlob('dl/app', blob);
  });
  afterAll(() => registry.stop());

  async function download(r: CountingProxy, options: { timeoutMs?: number; size?: number } = {}) {
    const dest = join(work, `dl-${Math.random().toString(16).slice(2)}`);
    const progress: number[] = [];
    const c = client(r.host, { timeoutMs: options.timeoutMs ?? 10_000 });
    try {
      const result = await c.downloadBlob('dl/app', blob.digest, dest, {
        size: options.size ?? blob.size,
        onProgress: (n) => progress.push(n),
      });
      return { result, dest, progress, retries: c.stats.retries };
    } finally {
      await c.close();
    }
  }

  it('a throttled blob that takes several times the timeout still finishes: the timeout is for silence only', async () => {
    // ~200 KB/s in tenths of a second: about 3 s for the blob, with a 1 s timeout.
    const r = await relay({
      target: registry.host,
      fault: ({ kind }) => (kind === 'blob-get' ? { throttleBytesPerSecond: 200_000 } : undefined),
    });
    const { result, dest, progress } = await download(r, { timeoutMs: 1000 });
    expect(result.size).toBe(blob.size);
    expect(await digestFile(dest)).toBe(blob.digest);
    expect(blobGets(r)).toHaveLength(1);
    expect(progress.at(-1)).toBe(blob.size);
  });

  it('a GET cut mid-body resumes with Range: at most 1.1 × the blob crosses the link, progress counts it once', async () => {
    const r = await relay({
      target: registry.host,
      fault: ({ kind, index }) =>
        kind === 'blob-get' && index === 0 ? { drop: 'mid-response', afterBytes: 250_000 } : undefined,
    });
    const { dest, progress, retries } = await download(r);
    expect(await digestFile(dest)).toBe(blob.digest);
    const gets = blobGets(r);
    expect(gets.map((g) => g.status)).toEqual([200, 206]);
    expect(gets.reduce((n, g) => n + g.bytesDown, 0)).toBeLessThanOrEqual(1.1 * blob.size);
    expect(Math.max(...progress)).toBe(blob.size);
    expect(progress).toEqual([...progress].sort((a, b) => a - b));
    expect(retries).toBe(1);
  });

  it('where ranges do not work, a cut GET starts the file over: progress goes back to 0, never past 100 %', async () => {
    const r = await relay({
      target: registry.host,
      noRanges: true,
      fault: ({ kind, index }) =>
        kind === 'blob-get' && index === 0 ? { drop: 'mid-response', afterBytes: 250_000 } : undefined,
    });
    const { dest, progress } = await download(r);
    expect(await digestFile(dest)).toBe(blob.digest);
    expect(blobGets(r).map((g) => g.status)).toEqual([200, 200]);
    expect(progress).toContain(0);
    expect(Math.max(...progress)).toBe(blob.size);
  });

  it('stops as soon as more bytes arrive than the descriptor declares, and keeps nothing', async () => {
    const r = await relay({
      target: registry.host,
      fault: ({ kind }) => (kind === 'blob-get' ? { endless: true } : undefined),
    });
    const before = readdirSync(work);
    const error = await download(r).catch((e: unknown) => e);
    expect(String(error)).toContain(`more than the ${blob.size} bytes the descriptor declares`);
    // What was already in flight (socket buffers) may cross, but not the endless rest.
    expect(blobGets(r).reduce((n, g) => n + g.bytesDown, 0)).toBeLessThan(32 * 1024 * 1024);
    expect(readdirSync(work)).toEqual(before);
  });

  it('a blob whose bytes do not match its digest fails at once (no retry can fix it) and keeps nothing', async () => {
    const r = await relay({
      target: registry.host,
      fault: ({ kind }) => (kind === 'blob-get' ? { corrupt: true } : undefined),
    });
    const before = readdirSync(work);
    const error = await download(r).catch((e: unknown) => e);
    expect(String(error)).toContain(`content has digest sha256:`);
    expect(String(error)).toContain(`expected ${blob.digest}`);
    expect(blobGets(r)).toHaveLength(1);
    expect(readdirSync(work)).toEqual(before);
  });

  it('an answer carrying headers named constructor and __proto__ is read like any other, at the first try', async () => {
    // Names that are Object.prototype members: undici 6 failed the whole request on them ("val.push is not a
    // function"), so every try of every request to such a server failed.
    const r = await relay({
      target: registry.host,
      mapResponseHeaders: (_kind, headers) => ({ ...headers, constructor: 'x', ['__proto__']: 'y' }),
    });
    const { result, dest, retries } = await download(r);
    expect(result.size).toBe(blob.size);
    expect(await digestFile(dest)).toBe(blob.digest);
    expect(retries).toBe(0);
    expect(blobGets(r).map((g) => g.status)).toEqual([200]);
  });

  it('refuses a declared size larger than the free space before asking for a byte, naming both figures', async () => {
    const r = await relay({ target: registry.host });
    const error = await download(r, { size: 10 ** 15 }).catch((e: unknown) => e);
    expect(String(error)).toMatch(
      /the blob is 909\.5 TiB \(1000000000000000 bytes\) but .+ has only [\d.]+ \w+ \(\d+ bytes\) free/,
    );
    expect(blobGets(r)).toHaveLength(0);
  });
});

describe('with token auth', () => {
  let registry: RegistryService;
  const reader = { username: 'reader', password: 'reader-pw-1' };
  beforeAll(async () => {
    registry = await startRegistry({ auth: 'token', pullOnlyUsers: { [reader.username]: reader.password } });
  });
  afterAll(() => registry.stop());
  const creds = () => ({ username: registry.username!, password: registry.password! });

  it.each([
    ['Bearer before Basic', (bearer: string) => `${bearer}, Basic realm="registry, with a comma"`],
    ['Basic before Bearer', (bearer: string) => `Basic realm="registry, with a comma", ${bearer}`],
  ])('answers a WWW-Authenticate listing two challenges (%s) with the token flow', async (name, rewrite) => {
    const r = await relay({
      target: registry.host,
      mapResponseHeaders: (_kind, headers) => {
        const challenge = headers['www-authenticate'];
        return typeof challenge === 'string'
          ? { ...headers, 'www-authenticate': rewrite(challenge) }
          : headers;
      },
    });
    const before = registry.tokenRequests.length;
    const repo = `list/${name.startsWith('Bearer') ? 'a' : 'b'}`;
    const c = client(r.host, { credentials: creds() });
    await c.uploadBlob(repo, blob);
    expect(await c.headBlob(repo, blob.digest)).toEqual({ size: blob.size });
    expect(r.records.filter((rec) => rec.status === 401)).toHaveLength(1);
    expect(registry.tokenRequests.length - before).toBeGreaterThan(0);
    await c.close();
  });

  it('a 401 on one PATCH refreshes the token and goes on in the same upload session', async () => {
    const chunkSize = 64 * 1024;
    const r = await relay({
      target: registry.host,
      fault: ({ kind, index }) =>
        kind === 'upload-chunk' && index === 5
          ? { status: 401, headers: { 'www-authenticate': `${registry.challenge!},error="invalid_token"` } }
          : undefined,
    });
    const before = registry.tokenRequests.length;
    const c = client(r.host, { credentials: creds() });
    await c.uploadBlob('expiring/app', blob, { chunkSize });
    // One session: the anonymous first try is answered 401 (the challenge), the second opens it.
    expect(r.count('upload-start', (rec) => rec.status === 202)).toBe(1);
    expect(r.count('upload-status')).toBe(1);
    const sent = r.records
      .filter((rec) => rec.kind === 'upload-chunk' || rec.kind === 'upload-put')
      .reduce((n, rec) => n + rec.bytesUp, 0);
    // The refused chunk crossed once more; nothing else did (the old client sent 1.6 times the blob).
    expect(sent).toBeLessThanOrEqual(blob.size + chunkSize);
    expect(registry.tokenRequests.length - before).toBe(2);
    expect(await c.headBlob('expiring/app', blob.digest)).toEqual({ size: blob.size });
    expect(c.stats.bytesUploaded).toBe(blob.size);
    await c.close();
  });

  it('a pull-only user is told that the push right is missing, for which repository', async () => {
    const c = client(registry.host, { credentials: reader });
    const error = await c.uploadBlob('readonly/app', blob).catch((e: unknown) => e);
    expect(String(error)).toContain(
      "start upload to readonly/app: user 'reader' lacks the 'push' right on repository 'readonly/app'",
    );
    expect(String(error)).not.toContain(reader.password);
    await c.close();
  });
});

describe('credentials stay with the registry (htpasswd)', () => {
  let registry: RegistryService;
  beforeAll(async () => {
    registry = await startRegistry({ auth: 'htpasswd' });
  });
  afterAll(() => registry.stop());
  const creds = () => ({ username: registry.username!, password: registry.password! });

  it('an upload Location on another origin gets no Authorization header (and no challenge round)', async () => {
    // The registry names another host:port for the upload (as a storage backend or a hostile registry may).
    const foreign = await relay({ target: registry.host });
    const own = await relay({
      target: registry.host,
      mapResponseHeaders: (kind, headers) =>
        kind === 'upload-start' && typeof headers.location === 'string'
          ? { ...headers, location: headers.location.replace(own.host, foreign.host) }
          : headers,
    });
    const c = client(own.host, { credentials: creds() });
    const error = await c.uploadBlob('origin/app', blob).catch((e: unknown) => e);
    await c.close();
    // docker-registry wants credentials at the foreign origin too, so the upload fails there: without them.
    expect(String(error)).toContain('HTTP 401');
    expect(own.count('upload-start', (rec) => rec.authorized && rec.status === 202)).toBe(1);
    expect(foreign.records.map((rec) => `${rec.kind} ${rec.authorized}`)).toEqual(['upload-put false']);
  });

  it('insecure-registries, plain http: a reset of the first request is retried; credentials only after the scheme is known', async () => {
    // The relay (a node http server) answers a TLS handshake with an HTTP 400, as docker-registry's own would.
    // The reset hits the probe's http try while lookups for the other blobs go beside it.
    let dropped = false;
    const r = await relay({
      target: registry.host,
      fault: () => (dropped ? undefined : ((dropped = true), { drop: 'mid-body' })),
    });
    const c = client(r.host, { insecure: false, tlsVerify: false, credentials: creds() });
    try {
      await Promise.all(layout.blobs.map((b) => c.headBlob('reset-http/app', b.digest)));
      await c.uploadBlob('reset-http/app', blob);
      expect(await c.headBlob('reset-http/app', blob.digest)).toEqual({ size: blob.size });
      expect(c.stats.retries).toBe(1);
      expect(r.records[0]).toMatchObject({ status: 0, authorized: false });
      expect(r.count('upload-put')).toBe(1);
      // Every request before the registry's first answer went without credentials.
      const firstAnswer = r.records.findIndex((rec) => rec.status === 401);
      expect(r.records.slice(0, firstAnswer + 1).filter((rec) => rec.authorized)).toEqual([]);
    } finally {
      await c.close();
    }
  });

  it("a redirect target's 401 is not the registry's challenge: its token realm never sees the credentials", async () => {
    // Storage on another origin (plain http) answers the redirected blob GET with a Bearer challenge naming a
    // realm of its own: whoever sits on that leg would collect the password from the token request.
    const seen: string[] = [];
    const storage = createHttpServer((req, res) => {
      seen.push(`${req.method} ${req.url} ${req.headers.authorization ?? '-'}`);
      req.resume();
      if (req.url?.startsWith('/token')) return void res.writeHead(200).end('{"token":"evil"}');
      const realm = `http://127.0.0.1:${(storage.address() as AddressInfo).port}/token`;
      res.writeHead(401, { 'www-authenticate': `Bearer realm="${realm}",service="x"` }).end();
    });
    await new Promise<void>((resolve) => storage.listen(0, '127.0.0.1', resolve));
    try {
      const location = `http://127.0.0.1:${(storage.address() as AddressInfo).port}/storage/blob`;
      const r = await relay({
        target: registry.host,
        fault: ({ kind }) => (kind === 'blob-get' ? { status: 307, headers: { location } } : undefined),
      });
      const c = client(r.host, { credentials: creds() });
      await c.uploadBlob('redirected/app', blob);
      const error = await c
        .downloadBlob('redirected/app', blob.digest, join(work, 'redirected'), { size: blob.size })
        .catch((e: unknown) => e);
      await c.close();
      expect(String(error)).toContain(
        `HTTP 401 from http://127.0.0.1:${(storage.address() as AddressInfo).port}`,
      );
      expect(seen.filter((line) => line.includes('/token') || !line.endsWith(' -'))).toEqual([]);
    } finally {
      storage.closeAllConnections();
      await new Promise((resolve) => storage.close(resolve));
    }
  });

  it('credentials still go to an insecure registry written localhost:80 (the URL parser drops the port)', async () => {
    // Port 80 needs root, as the suite runs.
    const r = await relay({ target: registry.host, listen: { host: 'localhost', port: 80 } });
    const c = client('localhost:80', { credentials: creds() });
    try {
      await c.uploadBlob('forms/app', blob);
      expect(await c.headBlob('forms/app', blob.digest)).toEqual({ size: blob.size });
      expect(r.count('upload-start', (rec) => rec.authorized)).toBe(1);
    } finally {
      await c.close();
    }
  });

  it.each([401, 403])(
    'a cross-repository mount refused with %i is "mount not possible": the blob is uploaded normally',
    async (status) => {
      const r = await relay({
        target: registry.host,
        fault: ({ kind }) => (kind === 'mount' ? { status } : undefined),
      });
      const c = client(r.host, { credentials: creds() });
      expect(await c.mountBlob(`mount${status}/app`, blob.digest, 'elsewhere/app')).toEqual({
        mounted: false,
        refused: true,
      });
      await c.uploadBlob(`mount${status}/app`, blob);
      expect(await c.headBlob(`mount${status}/app`, blob.digest)).toEqual({ size: blob.size });
      // Refused once, not retried.
      expect(r.count('mount')).toBe(1);
      await c.close();
    },
  );
});

describe('an insecure https registry whose first TLS connection is reset', () => {
  let registry: RegistryService;
  beforeAll(async () => {
    registry = await startRegistry({ auth: 'htpasswd', tls: 'server' });
  });
  afterAll(() => registry.stop());

  it.each([
    ['127.0.0.1', 443, '127.0.0.1:443'],
    ['::1', 0, '[0:0::1]:PORT'],
  ])(
    'credentials still go to the registry written %s:%s as %s (the URL parser rewrites that host)',
    async (listenHost, listenPort, written) => {
      // A TCP forwarder on that address in front of the TLS registry (443 needs root, as the suite runs).
      const sockets = new Set<Socket>();
      const forward = createNetServer((socket) => {
        const [host, port] = registry.host.split(':');
        const upstream = connect(Number(port), host!);
        for (const s of [socket, upstream]) {
          sockets.add(s);
          s.on('close', () => sockets.delete(s));
          s.on('error', () => undefined);
        }
        socket.pipe(upstream).pipe(socket);
      });
      await new Promise<void>((resolve) => forward.listen(listenPort, listenHost, resolve));
      const c = new RegistryClient({
        registry: written.replace('PORT', String((forward.address() as AddressInfo).port)),
        tlsVerify: false,
        credentials: { username: registry.username!, password: registry.password! },
        retryBaseDelayMs: 10,
        timeoutMs: 10_000,
      });
      try {
        await c.uploadBlob('forms/app', blob);
        expect(await c.headBlob('forms/app', blob.digest)).toEqual({ size: blob.size });
      } finally {
        await c.close();
        for (const socket of sockets) socket.destroy();
        await new Promise((resolve) => forward.close(resolve));
      }
    },
  );

  it('a TLS 1.2 server refusing a missing client certificate (handshake_failure) is told once, with the certs.d hint', async () => {
    // OpenSSL-based servers (HAProxy, stunnel, node) say it so in TLS 1.2; TLS 1.3 has certificate_required.
    const ca = makeTestCa(mkdtempSync(join(work, 'tls12-')));
    let handshakes = 0;
    const server = createTlsServer(
      {
        key: readFileSync(ca.serverKey),
        cert: readFileSync(ca.serverCert),
        ca: readFileSync(ca.caCert),
        requestCert: true,
        rejectUnauthorized: true,
        maxVersion: 'TLSv1.2',
      },
      (socket) => socket.end('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n'),
    );
    server.on('tlsClientError', () => handshakes++);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    const c = new RegistryClient({
      registry: host,
      tlsVerify: false,
      retryBaseDelayMs: 10,
      timeoutMs: 10_000,
    });
    try {
      const error = String(await c.headBlob('tls12/app', blob.digest).catch((e: unknown) => e));
      expect(error).toMatch(
        new RegExp(
          `^RegistryError: HEAD blob \\S+ in tls12/app: the TLS handshake with ${host} failed \\([^\\n]*alert handshake failure[^\\n]*\\): ` +
            `if it requires a TLS client certificate, put the certificate and key as client\\.cert and client\\.key in .*${host}/ .*; ` +
            'otherwise it shares no TLS version or cipher with this client\\.$',
        ),
      );
      expect({ retries: c.stats.retries, handshakes }).toEqual({ retries: 0, handshakes: 1 });
    } finally {
      await c.close();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('retries https and never falls back to plain http (where something else answers on the same port)', async () => {
    // One port, two listeners as a front server might have them: TLS goes to the registry, plain http gets a
    // web server's 404. The first TLS connection is reset: a transient failure, not a sign of plain http.
    let connections = 0;
    let plainRequests = 0;
    const sockets = new Set<Socket>();
    const front = createNetServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => undefined);
      if (connections++ === 0) return void socket.resetAndDestroy();
      socket.once('data', (first: Buffer) => {
        if (first[0] !== 0x16) {
          plainRequests++;
          socket.end('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
          return;
        }
        const [host, port] = registry.host.split(':');
        const upstream = connect(Number(port), host!);
        sockets.add(upstream);
        upstream.on('close', () => sockets.delete(upstream));
        upstream.on('error', () => socket.destroy());
        socket.on('error', () => upstream.destroy());
        upstream.write(first);
        socket.pipe(upstream).pipe(socket);
      });
    });
    await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve));
    const host = `127.0.0.1:${(front.address() as AddressInfo).port}`;
    const c = new RegistryClient({
      registry: host,
      tlsVerify: false,
      credentials: { username: registry.username!, password: registry.password! },
      retryBaseDelayMs: 10,
      timeoutMs: 10_000,
    });
    try {
      await c.uploadBlob('reset/app', blob);
      expect(await c.headBlob('reset/app', blob.digest)).toEqual({ size: blob.size });
      expect(plainRequests).toBe(0);
      expect(c.stats.retries).toBe(1);
    } finally {
      await c.close();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => front.close(resolve));
    }
  });
});

/** An http server answering as `answer` says; closed with its connections after the test. */
async function rawServer(answer: (req: IncomingMessage, res: ServerResponse) => void) {
  const server = createHttpServer(answer);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    host: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    server,
    stop: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

async function failure<T>(host: string, use: (c: RegistryClient) => Promise<T>): Promise<string> {
  const c = client(host, { timeoutMs: 500, retries: 0 });
  try {
    return String(await use(c).catch((e: unknown) => e));
  } finally {
    await c.close();
  }
}

describe('a server that goes silent, or words its status itself (a raw http server)', () => {
  it('a status is told with its standard phrase, never the words the server put after it', async () => {
    const s = await rawServer((_req, res) => {
      res.statusMessage = '::add-mask::the server says';
      res.writeHead(404, { 'content-type': 'text/plain' }).end();
    });
    try {
      const message = await failure(s.host, (c) => c.getManifest('raw/app', 'v1'));
      expect(message).toMatch(/GET manifest raw\/app:v1: HTTP 404 Not Found$/);
    } finally {
      await s.stop();
    }
  });

  it("a proxy's error page is told by its title (nginx refusing a request without a client certificate), flattened", async () => {
    // nginx's own page, byte for byte, when `ssl_verify_client on` gets no certificate.
    const nginx =
      '<html>\r\n<head><title>400 No required SSL certificate was sent</title></head>\r\n<body>\r\n' +
      '<center><h1>400 Bad Request</h1></center>\r\n<center>No required SSL certificate was sent</center>\r\n' +
      '<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n';
    const hostile = `<html><title>\n::error::forged ${'x'.repeat(1000)}</title></html>`;
    const plain = '<html><head><title>404 Not Found</title></head></html>';
    const s = await rawServer((req, res) => {
      const page = req.url?.endsWith('/nginx') ? nginx : req.url?.endsWith('/hostile') ? hostile : plain;
      res.writeHead(req.url?.endsWith('/plain') ? 404 : 400, { 'content-type': 'text/html' }).end(page);
    });
    try {
      expect(await failure(s.host, (c) => c.getManifest('raw/app', 'nginx'))).toMatch(
        /GET manifest raw\/app:nginx: HTTP 400 Bad Request \(its page says "400 No required SSL certificate was sent"\)$/,
      );
      const forged = await failure(s.host, (c) => c.getManifest('raw/app', 'hostile'));
      expect(forged).toMatch(/HTTP 400 Bad Request \(its page says ":: ?error::forged x+…/);
      expect(forged).not.toMatch(/\n/);
      expect(forged.length).toBeLessThan(300);
      // A page that only repeats the status adds nothing.
      expect(await failure(s.host, (c) => c.getManifest('raw/app', 'plain'))).toMatch(
        /GET manifest raw\/app:plain: HTTP 404 Not Found$/,
      );
    } finally {
      await s.stop();
    }
  });

  it("a page's title is found however its tag is written, read as text (entities decoded, spaces folded), masked, and in a page too large to read whole", async () => {
    registerSecret('pa&ss<w0rd>');
    const pages: Record<string, string> = {
      // Apache and IIS write the tag in capitals; some pages give it attributes or a space before '>'.
      upper: '<HTML><HEAD><TITLE >Service Unavailable &#8212; maintenance</TITLE ></HEAD></HTML>',
      attrs: '<html><title lang="en" dir="ltr">Access denied &amp; logged</title></html>',
      // A page escapes what it echoes: the secret it quotes is the secret, entities or not.
      echo: '<title>Bad login pa&amp;ss&lt;w0rd&gt;&#x1b;[31m &constructor;</title>',
      folded: '<title>\r\n  400\r\n  Bad   Request\r\n</title>',
      // A filtering proxy's block page, its style and logo inline: larger than an error body may be.
      large: `<html><head><title>Blocked by policy</title><style>${'x'.repeat(200 * 1024)}</style></head></html>`,
    };
    const s = await rawServer((req, res) => {
      res.writeHead(400, { 'content-type': 'text/html' }).end(pages[req.url!.split('/').pop()!]);
    });
    try {
      const says = (tag: string) => failure(s.host, (c) => c.getManifest('raw/app', tag));
      expect(await says('upper')).toMatch(
        /HTTP 400 Bad Request \(its page says "Service Unavailable — maintenance"\)$/,
      );
      expect(await says('attrs')).toMatch(/HTTP 400 Bad Request \(its page says "Access denied & logged"\)$/);
      expect(await says('echo')).toMatch(
        /HTTP 400 Bad Request \(its page says "Bad login \*\*\* \[31m &constructor;"\)$/,
      );
      expect(await says('folded')).toMatch(/GET manifest raw\/app:folded: HTTP 400 Bad Request$/);
      expect(await says('large')).toMatch(/HTTP 400 Bad Request \(its page says "Blocked by policy"\)$/);
    } finally {
      await s.stop();
    }
  });

  it('a manifest whose body is cut is asked for again; one that trickles past the deadline says which request it was', async () => {
    const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociManifest }));
    let gets = 0;
    const s = await rawServer((req, res) => {
      if (req.url?.endsWith('/manifests/cut')) {
        res.writeHead(200, {
          'content-type': MediaType.ociManifest,
          'content-length': String(manifest.length),
        });
        // The first answer stops after half the body and the connection drops, as a flaky proxy does.
        if (gets++ === 0) {
          res.write(manifest.subarray(0, manifest.length >> 1));
          setTimeout(() => res.destroy(), 50);
        } else res.end(manifest);
        return;
      }
      // A body that keeps coming, a byte every 100 ms, never complete: only the overall deadline ends it.
      res.writeHead(200, { 'content-type': MediaType.ociManifest, 'content-length': '100000' });
      const drip = setInterval(() => res.write('{'), 100);
      res.on('close', () => clearInterval(drip));
    });
    const c = client(s.host, { timeoutMs: 500 });
    try {
      const got = await c.getManifest('raw/app', 'cut');
      expect(got.bytes.equals(manifest)).toBe(true);
      expect(gets).toBe(2);
      expect(c.stats.retries).toBe(1);
      expect(await failure(s.host, (f) => f.getManifest('raw/app', 'trickle'))).toMatch(
        /GET manifest raw\/app:trickle: no complete answer within 0.5 s$/,
      );
    } finally {
      await c.close();
      await s.stop();
    }
  });

  it('a token answer cut mid-body is asked for again, and the request it was for goes through', async () => {
    const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociManifest }));
    const token = Buffer.from(JSON.stringify({ token: 'fresh-token', expires_in: 300 }));
    let tokenGets = 0;
    const s = await rawServer((req, res) => {
      if (req.url?.startsWith('/token')) {
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(token.length) });
        if (tokenGets++ === 0) {
          res.write(token.subarray(0, 5));
          setTimeout(() => res.destroy(), 50);
        } else res.end(token);
        return;
      }
      if (req.headers.authorization !== 'Bearer fresh-token') {
        res.writeHead(401, {
          'www-authenticate': `Bearer realm="http://${req.headers.host}/token",service="raw",scope="repository:raw/app:pull"`,
        });
        return void res.end();
      }
      res.writeHead(200, {
        'content-type': MediaType.ociManifest,
        'content-length': String(manifest.length),
      });
      res.end(manifest);
    });
    const c = client(s.host, { timeoutMs: 5000 });
    try {
      const got = await c.getManifest('raw/app', 'v1');
      expect(got.bytes.equals(manifest)).toBe(true);
      expect(tokenGets).toBe(2);
    } finally {
      await c.close();
      await s.stop();
    }
  });

  it('no answer, an answer that stops mid-body, an upload the server stops reading: each ends after the silence timeout', async () => {
    const sparse = join(work, 'sparse-blob');
    // Larger than the socket buffers on both sides, so the upload stalls with the client still writing.
    truncateSync((writeFileSync(sparse, ''), sparse), 64 * 1024 * 1024);
    let uploadSocket: Socket | undefined;
    const s = await rawServer((req, res) => {
      if (req.method === 'POST')
        return void res.writeHead(202, { location: '/v2/raw/app/blobs/uploads/s1' }).end();
      if (req.method === 'PUT') {
        req.pause();
        uploadSocket = req.socket;
        return;
      }
      if (req.url?.includes('/blobs/'))
        return void res.writeHead(200, { 'content-length': '100' }).write('0123456789');
      // a manifest request: never answered
    });
    try {
      // A small request also has its overall deadline, as long as the silence timeout: either may end it.
      expect(await failure(s.host, (c) => c.getManifest('raw/app', 'v1'))).toMatch(
        /GET manifest raw\/app:v1: no (complete )?answer within 0.5 s$/,
      );
      const digest = `sha256:${'0'.repeat(64)}`;
      expect(
        await failure(s.host, (c) => c.downloadBlob('raw/app', digest, join(work, 'stalled'), { size: 100 })),
      ).toMatch(/GET blob sha256:0+ from raw\/app: no data for 0.5 s \(stalled\)$/);
      expect(
        await failure(s.host, (c) =>
          c.uploadBlob('raw/app', { digest, size: 64 * 1024 * 1024, path: sparse }),
        ),
      ).toMatch(/upload blob sha256:0+ to raw\/app: the server took no data for 0.5 s \(stalled\)$/);
      // The server stopped reading with most of the blob still to come: the stall was mid-body.
      expect(uploadSocket!.bytesRead).toBeLessThan(32 * 1024 * 1024);
    } finally {
      await s.stop();
      rmSync(sparse);
    }
  });
});

describe('a blob file that cannot be read', () => {
  let registry: RegistryService;
  beforeAll(async () => {
    registry = await startRegistry();
  });
  afterAll(() => registry.stop());

  it.each([
    ['in one PUT', 0],
    ['in PATCH chunks', 64 * 1024],
  ])(
    'fails the upload (%s) with the read error, at once, and nothing is left sending',
    async (_, chunkSize) => {
      // A directory where the blob file should be: open succeeds, the first read fails (EISDIR), as a file on a
      // failing disk or a vanished network mount would mid-upload.
      const unreadable = mkdtempSync(join(work, 'unreadable-'));
      const c = client(registry.host);
      const error = await c
        .uploadBlob('unreadable/app', { ...blob, path: unreadable }, { chunkSize })
        .catch((e: unknown) => e);
      expect((error as Error | undefined)?.message).toMatch(/cannot read .*unreadable-.*: EISDIR/);
      expect(c.stats.retries).toBe(0);
      await c.close();
    },
  );
});

describe('answers read whole (manifests, referrers, tokens): cut, oversized and trickling bodies', () => {
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociManifest }));
  const alice = { username: 'alice', password: 'alice-pw-1' };

  /** Half of `body` under a content-length for all of it, then the connection drops. */
  function cut(res: ServerResponse, status: number, body: Buffer, headers: Record<string, string> = {}) {
    res.writeHead(status, { ...headers, 'content-length': String(body.length) });
    res.write(body.subarray(0, body.length >> 1));
    setTimeout(() => res.destroy(), 20);
  }

  function challenge(req: IncomingMessage, res: ServerResponse) {
    res.writeHead(401, {
      'www-authenticate': `Bearer realm="http://${req.headers.host}/token",service="raw",scope="repository:raw/app:pull"`,
    });
    res.end();
  }

  const token = Buffer.from(JSON.stringify({ token: 'fresh-token', expires_in: 300 }));

  it('a manifest cut every time costs one budget: retries + 1 GETs in all, the last cut told with the request', async () => {
    let gets = 0;
    const s = await rawServer((_req, res) => {
      gets++;
      cut(res, 200, manifest, { 'content-type': MediaType.ociManifest });
    });
    const c = client(s.host, { retries: 2 });
    try {
      const error = await c.getManifest('raw/app', 'cut').catch((e: unknown) => e);
      expect(String(error)).toMatch(/^TransientError: GET manifest raw\/app:cut: \S/);
      expect(gets).toBe(3);
      expect(c.stats.retries).toBe(2);
    } finally {
      await c.close();
      await s.stop();
    }
  });

  it('a manifest cut every time behind a token: one token, one 401, then the budget of GETs', async () => {
    const seen: string[] = [];
    const s = await rawServer((req, res) => {
      if (req.url?.startsWith('/token')) {
        seen.push('token');
        return void res.writeHead(200, { 'content-type': 'application/json' }).end(token);
      }
      if (req.headers.authorization !== 'Bearer fresh-token')
        return void (seen.push('401'), challenge(req, res));
      seen.push('get');
      cut(res, 200, manifest, { 'content-type': MediaType.ociManifest });
    });
    const c = client(s.host, { retries: 2, credentials: alice });
    try {
      const error = await c.getManifest('raw/app', 'cut').catch((e: unknown) => e);
      expect(String(error)).toMatch(/^TransientError: GET manifest raw\/app:cut: \S/);
      expect(seen).toEqual(['401', 'token', 'get', 'get', 'get']);
    } finally {
      await c.close();
      await s.stop();
    }
  });

  it('a manifest named by digest, cut once and then answered with other bytes: a digest mismatch, not another try', async () => {
    const digest = digestOf(manifest);
    let gets = 0;
    const s = await rawServer((_req, res) => {
      const other = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociIndex }));
      if (gets++ === 0) return cut(res, 200, manifest, { 'content-type': MediaType.ociManifest });
      res.writeHead(200, { 'content-type': MediaType.ociManifest }).end(other);
    });
    const c = client(s.host);
    try {
      const error = await c.getManifest('raw/app', digest).catch((e: unknown) => e);
      expect(String(error)).toContain(`manifest raw/app@${digest}: content has digest`);
      expect(gets).toBe(2);
    } finally {
      await c.close();
      await s.stop();
    }
  });

  it.each([
    ['cut', (res: ServerResponse) => cut(res, 404, Buffer.from('{"errors":[{"code":"NOT_FOUND"}]}'))],
    ['of 5 MiB', (res: ServerResponse) => void res.writeHead(404).end(Buffer.alloc(5 * 1024 * 1024, 0x20))],
  ])(
    'a referrers 404 whose body is %s still means "no referrers API", at the first try',
    async (_, answer) => {
      let gets = 0;
      const s = await rawServer((_req, res) => {
        gets++;
        answer(res);
      });
      const c = client(s.host);
      try {
        expect(await c.getReferrers('raw/app', digestOf(manifest))).toBeUndefined();
        expect(gets).toBe(1);
        expect(c.stats.retries).toBe(0);
      } finally {
        await c.close();
        await s.stop();
      }
    },
  );

  it('Link-paged referrers with the middle page cut once: that page is asked for again, every descriptor kept', async () => {
    const page = (n: number) =>
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MediaType.ociIndex,
          manifests: [
            { mediaType: MediaType.ociManifest, size: n, digest: `sha256:${String(n).repeat(64)}` },
          ],
        }),
      );
    const pages: string[] = [];
    const s = await rawServer((req, res) => {
      const n = Number(new URL(req.url!, 'http://x').searchParams.get('page') ?? '1');
      pages.push(String(n));
      const headers: Record<string, string> = { 'content-type': MediaType.ociIndex };
      if (n < 3) headers.link = `<${req.url!.split('?')[0]}?page=${n + 1}>; rel="next"`;
      if (n === 2 && pages.filter((p) => p === '2').length === 1) return cut(res, 200, page(n), headers);
      res.writeHead(200, headers).end(page(n));
    });
    const c = client(s.host);
    try {
      const found = await c.getReferrers('raw/app', digestOf(manifest));
      expect(found?.map((d) => d.size)).toEqual([1, 2, 3]);
      expect(pages).toEqual(['1', '2', '2', '3']);
      expect(c.stats.retries).toBe(1);
    } finally {
      await c.close();
      await s.stop();
    }
  });

  it.each([
    [
      '401 with a 100 KiB page',
      (res: ServerResponse) => void res.writeHead(401).end(Buffer.alloc(100 * 1024, 'x')),
    ],
    [
      '403 with a body cut short',
      (res: ServerResponse) => cut(res, 403, Buffer.from('{"details":"denied"}')),
    ],
  ])('a token server answering %s: the refusal is told at once, with the user', async (_, answer) => {
    let tokens = 0;
    const s = await rawServer((req, res) => {
      if (req.url?.startsWith('/token')) return void (tokens++, answer(res));
      challenge(req, res);
    });
    const c = client(s.host, { credentials: alice });
    try {
      const error = await c.getManifest('raw/app', 'v1').catch((e: unknown) => e);
      expect(String(error)).toContain(
        `the token server refused the credentials of user 'alice' for repository:raw/app:pull (HTTP`,
      );
      expect(tokens).toBe(1);
      expect(c.stats.retries).toBe(0);
    } finally {
      await c.close();
      await s.stop();
    }
  });

  it('a token answer cut every time: the budget of token requests, then the pull and the push stop (no second round)', async () => {
    const seen: string[] = [];
    const s = await rawServer((req, res) => {
      req.resume();
      if (req.url?.startsWith('/token')) {
        seen.push('token');
        return cut(res, 200, token, { 'content-type': 'application/json' });
      }
      seen.push(`${req.method}`);
      challenge(req, res);
    });
    const c = client(s.host, { retries: 2, credentials: alice });
    try {
      const pull = await c.getManifest('raw/app', 'v1').catch((e: unknown) => e);
      expect(String(pull)).toMatch(new RegExp(`get a token from http://${s.host}/token: \\S`));
      expect(seen).toEqual(['GET', 'token', 'token', 'token']);
      seen.length = 0;
      const push = await c.uploadBlob('raw/app', blob).catch((e: unknown) => e);
      expect(String(push)).toMatch(new RegExp(`get a token from http://${s.host}/token: \\S`));
      // The registry asked for a token before: the push goes to the token server first, and stops there.
      expect(seen).toEqual(['token', 'token', 'token']);
    } finally {
      await c.close();
      await s.stop();
    }
  });

  it('a token server that trickles past the deadline: each try ends at the deadline, told with the token server', async () => {
    let tokens = 0;
    const s = await rawServer((req, res) => {
      if (req.url?.startsWith('/token')) {
        tokens++;
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': '1000' });
        const drip = setInterval(() => res.write(' '), 50);
        return void res.on('close', () => clearInterval(drip));
      }
      challenge(req, res);
    });
    const c = client(s.host, { retries: 1, timeoutMs: 300, credentials: alice });
    try {
      const error = await c.getManifest('raw/app', 'v1').catch((e: unknown) => e);
      expect(String(error)).toMatch(
        new RegExp(`get a token from http://${s.host}/token: no complete answer within 0.3 s$`),
      );
      expect(tokens).toBe(2);
    } finally {
      await c.close();
      await s.stop();
    }
  });
});

describe('answers carrying headers or trailers named constructor and __proto__ (a raw http server)', () => {
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociManifest }));
  const hostile = Object.fromEntries([
    ['constructor', 'x'],
    ['__proto__', 'y'],
    ['Constructor', 'z'],
  ]);
  function withHostileHeaders(res: ServerResponse) {
    for (const [name, value] of Object.entries(hostile)) res.setHeader(name, value);
  }

  it('HEAD, a followed 307, a chunked answer with such trailers, 201 and 204: each read at the first try', async () => {
    const seen: string[] = [];
    const s = await rawServer((req, res) => {
      req.resume();
      seen.push(`${req.method} ${req.url}`);
      withHostileHeaders(res);
      if (req.method === 'HEAD') {
        return void res
          .writeHead(200, {
            'docker-content-digest': digestOf(manifest),
            'content-type': MediaType.ociManifest,
          })
          .end();
      }
      if (req.url === '/v2/raw/app/manifests/moved') {
        return void res.writeHead(307, { location: '/v2/raw/app/manifests/v1' }).end();
      }
      if (req.method === 'GET') {
        res.writeHead(200, { 'content-type': MediaType.ociManifest, trailer: 'constructor, __proto__' });
        res.write(manifest);
        res.addTrailers(hostile);
        return void res.end();
      }
      if (req.method === 'POST') return void res.writeHead(201).end();
      res.writeHead(204).end();
    });
    const c = client(s.host);
    try {
      expect((await c.headManifest('raw/app', 'v1'))?.digest).toBe(digestOf(manifest));
      expect((await c.getManifest('raw/app', 'moved')).bytes.equals(manifest)).toBe(true);
      expect(await c.mountBlob('raw/app', blob.digest, 'other/app')).toEqual({ mounted: true });
      const put = await c.putManifest('raw/app', 'v2', manifest, MediaType.ociManifest);
      expect(put.digest).toBe(digestOf(manifest));
      expect(c.stats.retries).toBe(0);
      expect(seen.filter((line) => !line.startsWith('GET /v2/ '))).toHaveLength(5);
    } finally {
      await c.close();
      await s.stop();
    }
  });
});

describe('a blob file that changes or fails while it is uploaded', () => {
  /** A blob of `size` bytes in a fresh file, for one test to damage. */
  function ownBlob(size: number): BlobInfo & { path: string } {
    const path = join(mkdtempSync(join(work, 'own-')), 'blob');
    const bytes = Buffer.alloc(size, 'a');
    writeFileSync(path, bytes);
    return { path, size, digest: digestOf(bytes), mediaType: 'application/octet-stream' };
  }

  /** The descriptors this process holds open on `path`. */
  function openOn(path: string): string[] {
    return readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`) === path;
      } catch {
        return false;
      }
    });
  }

  /** Waits (bounded) for the stream machinery to close what it destroyed: fs close is asynchronous. */
  async function settled(path: string): Promise<string[]> {
    for (let i = 0; i < 100 && openOn(path).length > 0; i++) await new Promise((r) => setTimeout(r, 20));
    return openOn(path);
  }

  /**
   * An upload endpoint taking PATCH chunks and telling where the session stands, as docker-registry does;
   * `onPatch` runs once a chunk has arrived whole, before the 202.
   */
  async function uploads(onPatch: (index: number) => void = () => undefined) {
    const seen: string[] = [];
    let patches = 0;
    let held = 0;
    const s = await rawServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('error', () => undefined);
      req.on('end', () => {
        seen.push(`${req.method} ${Buffer.concat(chunks).length}`);
        if (req.method === 'POST')
          return void res.writeHead(202, { location: '/v2/raw/app/blobs/uploads/s1' }).end();
        const location = '/v2/raw/app/blobs/uploads/s1';
        if (req.method === 'PATCH' && req.complete) {
          held += Buffer.concat(chunks).length;
          onPatch(patches++);
          return void res.writeHead(202, { location }).end();
        }
        if (req.method === 'GET') return void res.writeHead(204, { location, range: `0-${held - 1}` }).end();
        res.writeHead(201).end();
      });
    });
    return { s, seen };
  }

  it('a read error after two chunks went through fails the upload at once with that error', async () => {
    const b = ownBlob(24);
    const { s, seen } = await uploads((index) => {
      if (index === 1) {
        rmSync(b.path);
        mkdirSync(b.path);
      }
    });
    const c = client(s.host);
    try {
      const error = await c.uploadBlob('raw/app', b, { chunkSize: 8 }).catch((e: unknown) => e);
      expect((error as Error | undefined)?.message).toMatch(/EISDIR/);
      expect(c.stats.retries).toBe(0);
      expect(seen.filter((line) => line === 'PATCH 8')).toHaveLength(2);
      expect(seen.filter((line) => line.startsWith('PUT'))).toEqual([]);
    } finally {
      await c.close();
      await s.stop();
    }
  });

  /** A blob path in `dir` and what undoes it: the path need not be in `dir` itself (below a file). */
  type Unreadable = (dir: string) => Promise<{ path: string; unmake?: () => Promise<unknown> }>;
  it.each<[string, string, Unreadable]>([
    [
      'a FIFO',
      'not a regular file.',
      (dir) => {
        execFileSync('mkfifo', [join(dir, 'blob')]);
        return Promise.resolve({ path: join(dir, 'blob') });
      },
    ],
    [
      // open() fails with ENXIO: no network failure to try again.
      'a socket',
      'not a regular file.',
      async (dir) => {
        const server = createNetServer();
        await new Promise<void>((resolve) => server.listen(join(dir, 'blob'), resolve));
        return {
          path: join(dir, 'blob'),
          unmake: () => new Promise<unknown>((resolve) => server.close(resolve)),
        };
      },
    ],
    // Local file problems as much as ENOENT: not network failures to try again, nor node's bare stat error.
    [
      'a symlink loop',
      'ELOOP: ',
      (dir) => (symlinkSync('blob', join(dir, 'blob')), Promise.resolve({ path: join(dir, 'blob') })),
    ],
    [
      'a path below a regular file',
      'ENOTDIR: ',
      (dir) => (writeFileSync(join(dir, 'file'), ''), Promise.resolve({ path: join(dir, 'file/blob') })),
    ],
    ['nothing', 'ENOENT: ', (dir) => Promise.resolve({ path: join(dir, 'blob') })],
    [
      'a directory',
      'EISDIR: ',
      (dir) => (mkdirSync(join(dir, 'blob')), Promise.resolve({ path: join(dir, 'blob') })),
    ],
  ])(
    '%s where the blob file should be fails the upload at once, saying it cannot read it (%s)',
    async (_, why, make) => {
      const { path, unmake } = await make(mkdtempSync(join(work, 'unreadable-')));
      const { s, seen } = await uploads();
      const c = client(s.host);
      try {
        const error = await c
          .uploadBlob('raw/app', { path, size: 24, digest: digestOf(Buffer.alloc(24)) })
          .catch((e: unknown) => e);
        expect(String(error)).toMatch(new RegExp(`^Error: cannot read ${path}: ${why}`));
        expect(c.stats.retries).toBe(0);
        expect(seen.filter((line) => line.startsWith('PUT') && line !== 'PUT 0')).toEqual([]);
      } finally {
        await c.close();
        await s.stop();
        await unmake?.();
      }
    },
  );

  it('a file cut shorter after the first chunk fails at once, saying the local file changed (no retry can help)', async () => {
    const b = ownBlob(24);
    const { s, seen } = await uploads((index) => {
      if (index === 0) truncateSync(b.path, 12);
    });
    const c = client(s.host);
    try {
      const error = await c.uploadBlob('raw/app', b, { chunkSize: 8 }).catch((e: unknown) => e);
      expect(String(error)).toBe(
        `Error: local blob ${b.path} is 12 bytes now, not 24: it changed during the upload.`,
      );
      expect(c.stats.retries).toBe(0);
      // The second chunk never arrived whole; nothing was sent after it.
      expect(seen).toEqual(['POST 0', 'PATCH 8']);
    } finally {
      await c.close();
      await s.stop();
      expect(await settled(b.path)).toEqual([]);
    }
  });

  it('a PUT the server drops mid-body leaves the blob file closed', async () => {
    const sparse = join(mkdtempSync(join(work, 'dropped-')), 'blob');
    truncateSync((writeFileSync(sparse, ''), sparse), 64 * 1024 * 1024);
    const s = await rawServer((req, res) => {
      if (req.method === 'POST')
        return void res.writeHead(202, { location: '/v2/raw/app/blobs/uploads/s1' }).end();
      // The client's one look for the blob after the lost PUT (the blob is not there): answered at once, where
      // silence cost the whole 10 s timeout.
      if (req.method === 'HEAD') return void res.writeHead(404).end();
      let got = 0;
      req.on('data', (c: Buffer) => {
        got += c.length;
        if (got > 1024 * 1024) req.socket.destroy();
      });
    });
    const c = client(s.host, { retries: 0 });
    try {
      const digest = `sha256:${'0'.repeat(64)}`;
      const error = await c
        .uploadBlob('raw/app', { digest, size: 64 * 1024 * 1024, path: sparse })
        .catch((e: unknown) => e);
      expect(String(error)).toMatch(/^TransientError: upload blob sha256:0+ to raw\/app: /);
      expect(await settled(sparse)).toEqual([]);
    } finally {
      await c.close();
      await s.stop();
    }
  });

  it('a server that answers an upload early and then resets the connection leaves the blob file closed', async () => {
    const sparse = join(mkdtempSync(join(work, 'early-')), 'blob');
    truncateSync((writeFileSync(sparse, ''), sparse), 64 * 1024 * 1024);
    // Raw TCP: an answer with no length (it ends with the connection) to a PUT it never reads, then a reset while
    // the client still writes. undici takes the answer as complete and abandons the body where it stands.
    const server = createNetServer((socket) => {
      socket.on('error', () => undefined);
      let head = '';
      const onData = (data: Buffer) => {
        head += data.toString('latin1');
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        if (head.startsWith('POST')) {
          head = head.slice(end + 4);
          return void socket.write(
            'HTTP/1.1 202 Accepted\r\nLocation: /v2/raw/app/blobs/uploads/s1\r\nContent-Length: 0\r\n\r\n',
          );
        }
        socket.off('data', onData).pause();
        socket.write('HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\n\r\ntoo large');
        // Unread bytes make the close a reset; the pause lets the answer's head reach the client first.
        setTimeout(() => socket.destroy(), 100);
      };
      socket.on('data', onData);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const c = client(`127.0.0.1:${(server.address() as AddressInfo).port}`, { retries: 0 });
    try {
      const digest = `sha256:${'0'.repeat(64)}`;
      const error = await c
        .uploadBlob('raw/app', { digest, size: 64 * 1024 * 1024, path: sparse })
        .catch((e: unknown) => e);
      // The answer, not the reset: the connection closed after undici had the status.
      expect(String(error)).toMatch(/HTTP 413 Payload Too Large/);
      expect(await settled(sparse)).toEqual([]);
    } finally {
      await c.close();
      await new Promise((resolve) => server.close(resolve));
    }
  });

  it('a PATCH dropped mid-body is resumed from what the registry holds, and the blob file is closed after', async () => {
    const registry = await startRegistry();
    try {
      const b = ownBlob(600_000);
      const r = await relay({
        target: registry.host,
        fault: ({ kind, index }) =>
          kind === 'upload-chunk' && index === 2 ? { drop: 'mid-body' } : undefined,
      });
      const c = client(r.host);
      await c.uploadBlob('resume/app', b, { chunkSize: 100_000 });
      expect(r.count('upload-status')).toBe(1);
      expect(c.stats.retries).toBe(1);
      expect(await c.headBlob('resume/app', b.digest)).toEqual({ size: b.size });
      await c.close();
      expect(await settled(b.path)).toEqual([]);
    } finally {
      await registry.stop();
    }
  });
});

it('a registry without the upload status GET (405, 501): an upload that failed part-way starts over in a new session, not fails', async () => {
  const registry = await startRegistry();
  try {
    const b = { ...blob };
    // Chunks: the third PATCH cut mid-body, the status GET not served (405). One PUT: a 503, the GET 501.
    for (const [chunkSize, status, repository] of [
      [100_000, 405, 'nostatus/chunks'],
      [0, 501, 'nostatus/one-put'],
    ] as const) {
      const r = await relay({
        target: registry.host,
        fault: ({ kind, index }) => {
          if (kind === 'upload-status') return { status };
          if (kind === 'upload-chunk' && index === 2) return { drop: 'mid-body' };
          if (kind === 'upload-put' && chunkSize === 0 && index === 0) return { status: 503 };
          return undefined;
        },
      });
      const c = client(r.host);
      await c.uploadBlob(repository, b, { chunkSize });
      expect(r.count('upload-status')).toBe(1);
      expect(r.count('upload-start')).toBe(2);
      expect(c.stats.retries).toBe(1);
      expect(c.stats.bytesUploaded).toBe(b.size);
      expect(await c.headBlob(repository, b.digest)).toEqual({ size: b.size });
      await c.close();
    }
  } finally {
    await registry.stop();
  }
});

describe('a receiver that takes the body slowly (every write of it waits for the socket)', () => {
  /**
   * An upload endpoint that reads a little, then pauses, and answers the closing PUT with 201 only when what
   * arrived has the digest asked for (as a registry checks it), else 400 DIGEST_INVALID. Uploads read the file
   * into one reused buffer: a chunk overwritten while its write still waits would arrive as other bytes.
   */
  async function slowReceiver() {
    const hash = createHash('sha256');
    let received = 0;
    const s = await rawServer((req, res) => {
      const location = '/v2/slow/app/blobs/uploads/s1';
      if (req.method === 'POST') return void res.writeHead(202, { location }).end();
      let pauses = 0;
      req.on('data', (c: Buffer) => {
        hash.update(c);
        received += c.length;
        req.pause();
        // A long first pause fills the socket buffers on both ends; short ones after keep them full.
        setTimeout(() => req.resume(), pauses++ === 0 ? 300 : 1);
      });
      req.on('end', () => {
        if (req.method === 'PATCH') return void res.writeHead(202, { location }).end();
        const wanted = new URL(req.url!, 'http://x').searchParams.get('digest');
        const got = `sha256:${hash.digest('hex')}`;
        if (got !== wanted) {
          return void res
            .writeHead(400, { 'content-type': 'application/json' })
            .end(JSON.stringify({ errors: [{ code: 'DIGEST_INVALID', message: `got ${got}` }] }));
        }
        res.writeHead(201).end();
      });
    });
    return { s, received: () => received };
  }

  // 12 MiB (more than loopback's socket buffers hold) and an odd tail: full 1 MiB reads, a short last one, and chunks that do not line up with reads.
  const size = 12 * 1024 * 1024 + 12_345;
  for (const chunkSize of [0, 4_500_000]) {
    it(`every byte arrives as the file holds it (${chunkSize ? 'PATCH chunks' : 'one PUT'})`, async () => {
      const bytes = randomBytes(size);
      const path = join(mkdtempSync(join(work, 'slow-')), 'blob');
      writeFileSync(path, bytes);
      const { s, received } = await slowReceiver();
      const c = client(s.host, { retries: 0 });
      try {
        await c.uploadBlob('slow/app', { path, size, digest: digestOf(bytes) }, { chunkSize });
        expect(received()).toBe(size);
      } finally {
        await c.close();
        await s.stop();
      }
    });
  }
});

describe('a plain-http registry reached with TLS verification off (the scheme found out by a probe)', () => {
  /**
   * One port as a plain-http registry has it: a TLS handshake gets an HTTP 400, as from any http server.
   * `answer` answers each http request; requests in flight at once are counted.
   */
  async function plainHttpFront(answer: (req: IncomingMessage, res: ServerResponse, index: number) => void) {
    let index = 0;
    let handshakes = 0;
    let inFlight = 0;
    let maxInFlight = 0;
    const http = createHttpServer((req, res) => {
      maxInFlight = Math.max(maxInFlight, ++inFlight);
      res.on('close', () => inFlight--);
      answer(req, res, index++);
    });
    const sockets = new Set<Socket>();
    const front = createNetServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => undefined);
      socket.once('data', (first: Buffer) => {
        if (first[0] === 0x16) {
          handshakes++;
          socket.end('HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
          return;
        }
        socket.unshift(first);
        http.emit('connection', socket);
      });
    });
    await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve));
    return {
      host: `127.0.0.1:${(front.address() as AddressInfo).port}`,
      maxInFlight: () => maxInFlight,
      handshakes: () => handshakes,
      httpRequests: () => index,
      stop: async () => {
        for (const socket of sockets) socket.destroy();
        await new Promise((resolve) => front.close(resolve));
      },
    };
  }
  const digests = [1, 2, 3, 4].map((i) => `sha256:${String(i).repeat(64)}`);
  /** Each lookup's outcome: 'found', or its error as text. */
  const lookupOutcomes = (c: RegistryClient, list: readonly string[]) =>
    Promise.all(
      list.map((d) =>
        c.headBlob('probe/app', d).then(
          () => 'found',
          (e: unknown) => String(e),
        ),
      ),
    );
  const probeClient = (host: string) =>
    new RegistryClient({ registry: host, tlsVerify: false, retries: 0, timeoutMs: 10_000 });

  it("lookups go out over http beside the probe's own http try, not after its answer", async () => {
    // Every answer is held until all lookups are in (or for 3 s, so that lookups waiting for the probe's
    // answer end too).
    const held: Array<() => void> = [];
    const front = await plainHttpFront((_req, res) => {
      const reply = () => void (res.headersSent || res.writeHead(404, { 'content-length': '0' }).end());
      held.push(reply);
      if (held.length === digests.length) held.splice(0).forEach((release) => release());
      else setTimeout(reply, 3_000).unref();
    });
    const c = probeClient(front.host);
    try {
      expect(await Promise.all(digests.map((d) => c.headBlob('probe/app', d)))).toEqual(
        digests.map(() => undefined),
      );
      // The held probe and the three other lookups at once; one https try and four http requests in all.
      expect(front.maxInFlight()).toBe(digests.length);
      expect(c.stats.requests).toBe(digests.length + 1);
    } finally {
      await c.close();
      await front.stop();
    }
  });

  it('lookups sent beside a probe whose http try is refused (400) are dropped: each fails with its own probe, as the answer says', async () => {
    // The registry is listed in insecure-registries already (that is when a probe runs): the https failure's
    // advice to add it there would be wrong. nginx's page for plain http on its TLS port (a HEAD gets no page).
    const page = '<html><head><title>400 The plain HTTP request was sent to HTTPS port</title></head></html>';
    const front = await plainHttpFront(
      (_req, res) => void res.writeHead(400, { 'content-type': 'text/html' }).end(page),
    );
    const c = probeClient(front.host);
    try {
      const errors = await lookupOutcomes(c, digests);
      for (const error of errors) {
        expect(error).toMatch(/^RegistryError: HEAD blob sha256:\d+ in probe\/app: HTTP 400 Bad Request$/);
      }
      // An answer kept from beside a probe would have ended its lookup without a probe of its own.
      expect(front.handshakes()).toBe(digests.length);
      expect(String(await c.getManifest('probe/app', 'v1').catch((e: unknown) => e))).toBe(
        'RegistryError: GET manifest probe/app:v1: HTTP 400 Bad Request (its page says "400 The plain HTTP request was sent to HTTPS port")',
      );
    } finally {
      await c.close();
      await front.stop();
    }
  });

  it("a probe whose http try is reset is retried like any reset: the lookups and the probe's own request find their answers", async () => {
    // The registry answered the handshake in plain http, so it is in insecure-registries as it should be:
    // 'add it to insecure-registries' is no answer to a reset of the next connection.
    const front = await plainHttpFront((req, res, index) => {
      if (index === 0) return void req.socket.destroy();
      res.writeHead(404, { 'content-length': '0' }).end();
    });
    const c = new RegistryClient({
      registry: front.host,
      tlsVerify: false,
      retryBaseDelayMs: 10,
      timeoutMs: 10_000,
    });
    try {
      expect(await Promise.all(digests.map((d) => c.headBlob('probe/app', d)))).toEqual(
        digests.map(() => undefined),
      );
      expect(c.stats.retries).toBe(1);
    } finally {
      await c.close();
      await front.stop();
    }
  });

  it('50 lookups beside probes whose http try is refused: each goes beside a probe once, then waits (no storm)', async () => {
    // Each probe's failure ends one lookup; the others go on. Sent beside every later probe too, they would
    // cost n²/2 clear-text requests; waiting for the later probes' answers, as before lookups went beside,
    // each costs at most its own probe and one request beside the first one.
    const front = await plainHttpFront(
      (_req, res) => void res.writeHead(400, { 'content-length': '0' }).end(),
    );
    const c = probeClient(front.host);
    const lookups = 50;
    const many = Array.from({ length: lookups }, (_, i) => `sha256:${i.toString(16).padStart(64, '0')}`);
    try {
      const errors = await lookupOutcomes(c, many);
      for (const error of errors) expect(error).toMatch(/: HTTP 400 Bad Request$/);
      expect(front.handshakes()).toBe(lookups);
      expect(front.httpRequests()).toBe(2 * lookups - 1);
      expect(c.stats.retries).toBe(0);
    } finally {
      await c.close();
      await front.stop();
    }
  });
});
