/**
 * The lean range client reads answers it parses itself, from servers that may be hostile: these raw servers
 * answer exactly the bytes each test scripts, and count connections and requests.
 */
import { afterEach, describe, expect, it } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, get as httpGet } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer, type TlsOptions } from 'node:tls';
import { RangeConnection, RangeFailure } from '../../src/core/range-connection.js';
import { REPO_ROOT } from '../support/harness.js';
import { nodeTrusting as runTrusting } from '../support/node-trusting.js';
import { makeTestCa, type TestCa } from '../support/test-ca.js';
import { startForwardProxy } from '../support/forward-proxy.js';
import { trickle } from '../support/trickle.js';
import { readProxySettings } from '../../src/core/proxy-env.js';

const data = randomBytes(300_000);
const servers: Server[] = [];
const connections: RangeConnection[] = [];
afterEach(() => {
  for (const c of connections.splice(0)) c.close();
  for (const s of servers.splice(0)) s.close();
});

/**
 * A raw server (over TLS given `tls`): `answer` gets each request's Range and writes whatever it likes on the
 * socket.
 */
async function rawServer(
  answer: (socket: Socket, start: number, end: number, index: number) => void,
  tls?: TlsOptions,
) {
  const stats = { connections: 0, requests: 0 };
  const onSocket = (socket: Socket) => {
    stats.connections++;
    let pending = '';
    socket.on('data', (chunk: Buffer) => {
      pending += chunk.toString('latin1');
      for (let end = pending.indexOf('\r\n\r\n'); end !== -1; end = pending.indexOf('\r\n\r\n')) {
        const head = pending.slice(0, end);
        pending = pending.slice(end + 4);
        const m = /Range: bytes=(\d+)-(\d+)/.exec(head)!;
        answer(socket, Number(m[1]), Number(m[2]), stats.requests++);
      }
    });
    socket.on('error', () => undefined);
  };
  const server = tls ? createTlsServer(tls, onSocket) : createServer(onSocket);
  servers.push(server);
  await new Promise<void>((ready) => server.listen(0, '127.0.0.1', ready));
  const port = (server.address() as AddressInfo).port;
  const url = new URL(`${tls ? 'https' : 'http'}://127.0.0.1:${port}/archive?sig=a%20b`);
  return { url, stats };
}

/** Runs `script` (an ES module importing the built connection module) in a node trusting `caCert`. */
function nodeTrusting(
  caCert: string,
  script: string,
  url: URL | string,
  env: Record<string, string> = {},
): Promise<string> {
  const module = JSON.stringify(join(REPO_ROOT, 'lib/core/range-connection.js'));
  const download = JSON.stringify(join(REPO_ROOT, 'lib/core/ranged-download.js'));
  const source =
    `import { RangeConnection } from ${module};\nimport { downloadInOrder } from ${download};\n` +
    `import { createHash } from 'node:crypto';\n${script}`;
  return runTrusting(caCert, source, [String(url)], env);
}

/** An https server (closed after the test) answering each Range with its bytes of `data`; resolves its port. */
async function httpsRangeServer(ca: TestCa): Promise<number> {
  const server = createHttpsServer(
    { cert: readFileSync(ca.serverCert), key: readFileSync(ca.serverKey) },
    (req, res) => {
      const [, a, b] = /bytes=(\d+)-(\d+)/.exec(req.headers.range!)!.map(Number) as [number, number, number];
      const end = Math.min(b, data.length - 1);
      res.writeHead(206, {
        'Content-Range': `bytes ${a}-${end}/${data.length}`,
        'Content-Length': end - a + 1,
      });
      res.end(data.subarray(a, end + 1));
    },
  );
  servers.push(server);
  await new Promise<void>((ready) => server.listen(0, '127.0.0.1', ready));
  return (server.address() as AddressInfo).port;
}

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

const partial = (start: number, end: number, extra = '') =>
  `HTTP/1.1 206 Partial Content\r\nContent-Range: bytes ${start}-${end}/${data.length}\r\n` +
  `Content-Length: ${end - start + 1}\r\n${extra}\r\n`;

function open(url: URL, idleMs = 5000) {
  const c = new RangeConnection(url, idleMs);
  connections.push(c);
  return c;
}

async function failure(promise: Promise<unknown>): Promise<RangeFailure> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(RangeFailure);
  return error as RangeFailure;
}

describe('range connection', () => {
  it('reads ranges one after another on one kept-alive connection, into the buffer it is lent', async () => {
    const { url, stats } = await rawServer((socket, start, asked) => {
      const end = Math.min(asked, data.length - 1);
      socket.write(partial(start, end));
      socket.write(data.subarray(start, end + 1));
    });
    const c = open(url);
    const into = Buffer.alloc(200_000);
    expect(await c.get({ start: 0, end: 199_999 }, into)).toBe(data.length);
    expect(into.equals(data.subarray(0, 200_000))).toBe(true);
    expect(c.usable).toBe(true);
    // The last range is shorter than asked for, as the total says.
    expect(await c.get({ start: 200_000, end: 399_999 }, into)).toBe(data.length);
    expect(into.subarray(0, 100_000).equals(data.subarray(200_000))).toBe(true);
    expect(stats).toEqual({ connections: 1, requests: 2 });
  });

  it('reads a head and body that arrive a byte at a time', async () => {
    const { url } = await rawServer((socket, start, end) => {
      const bytes = Buffer.concat([Buffer.from(partial(start, end)), data.subarray(start, end + 1)]);
      let i = 0;
      const drip = () => {
        if (i < bytes.length) socket.write(bytes.subarray(i, ++i), drip);
      };
      drip();
    });
    const into = Buffer.alloc(300);
    expect(await open(url).get({ start: 10, end: 309 }, into)).toBe(data.length);
    expect(into.equals(data.subarray(10, 310))).toBe(true);
  });

  it('reads the right bytes whatever read the head ends in, the end of head split at every position', async () => {
    const { url, stats } = await rawServer((socket, start, end, index) => {
      const bytes = Buffer.concat([Buffer.from(partial(start, end)), data.subarray(start, end + 1)]);
      // The n-th answer is cut after its n-th byte, the second part written once the first is on its way.
      socket.write(bytes.subarray(0, index + 1), () =>
        setImmediate(() => socket.write(bytes.subarray(index + 1))),
      );
    });
    const c = open(url);
    const into = Buffer.alloc(100);
    const headLength = partial(0, 99).length;
    for (let i = 0; i < headLength + 4; i++) {
      into.fill(0);
      expect(await c.get({ start: i, end: i + 99 }, into)).toBe(data.length);
      expect(into.equals(data.subarray(i, i + 100))).toBe(true);
    }
    expect(stats.connections).toBe(1);
  });

  it("skips interim answers (100 Continue, 103 Early Hints) before the 206, as node's client does", async () => {
    const { url } = await rawServer((socket, start, end, index) => {
      const interim =
        'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n';
      const bytes = Buffer.concat([
        Buffer.from(interim + partial(start, end)),
        data.subarray(start, end + 1),
      ]);
      // Once in one piece, once with the interim answers and the final head in reads of their own.
      if (index === 0) socket.write(bytes);
      else for (const cut of [interim.length - 5, interim.length + 7]) socket.write(bytes.subarray(0, cut));
      if (index !== 0) socket.write(bytes.subarray(interim.length + 7));
    });
    const c = open(url);
    const into = Buffer.alloc(100);
    for (const start of [0, 1000]) {
      expect(await c.get({ start, end: start + 99 }, into)).toBe(data.length);
      expect(into.equals(data.subarray(start, start + 100))).toBe(true);
    }
    expect(c.usable).toBe(true);
  });

  it('asks with the URL as given, percent-encoding kept, and the Host it names', async () => {
    let request = '';
    const server = createServer((socket) =>
      socket.once('data', (chunk: Buffer) => {
        request = chunk.toString('latin1');
        socket.end(`${partial(0, 0)}${data.subarray(0, 1).toString('latin1')}`, 'latin1');
      }),
    );
    servers.push(server);
    await new Promise<void>((ready) => server.listen(0, '127.0.0.1', ready));
    const { port } = server.address() as AddressInfo;
    await open(new URL(`http://127.0.0.1:${port}/a/b?sv=1&sig=x%2By`)).get(
      { start: 0, end: 0 },
      Buffer.alloc(1),
    );
    expect(request).toBe(
      `GET /a/b?sv=1&sig=x%2By HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nRange: bytes=0-0\r\n\r\n`,
    );
  });

  it("sends the URL's user and password as node's client does (Basic), and nothing else of it", async () => {
    const requests: string[] = [];
    const server = createServer((socket) =>
      socket.once('data', (chunk: Buffer) => {
        requests.push(chunk.toString('latin1'));
        socket.end(`${partial(0, 0)}${data.subarray(0, 1).toString('latin1')}`, 'latin1');
      }),
    );
    servers.push(server);
    await new Promise<void>((ready) => server.listen(0, '127.0.0.1', ready));
    const { port } = server.address() as AddressInfo;
    const url = new URL(`http://us%0D%0Aer:p%40ss@127.0.0.1:${port}/a?b#frag`);
    await new Promise((done) =>
      httpGet(url, { headers: { Range: 'bytes=0-0' } }, (res) => res.resume().on('end', done)),
    );
    await open(url).get({ start: 0, end: 0 }, Buffer.alloc(1));
    const authorization = (request: string) => /^authorization: (.*)\r$/im.exec(request)?.[1];
    expect(authorization(requests[0]!)).toBe(`Basic ${Buffer.from('us\r\ner:p@ss').toString('base64')}`);
    expect(authorization(requests[1]!)).toBe(authorization(requests[0]!));
    expect(requests[1]).toMatch(/^GET \/a\?b HTTP\/1\.1\r\n/);
  });

  it.each([
    [
      'a cut body',
      (s: Socket, a: number, b: number) => s.end(partial(a, b) + 'x'.repeat(10)),
      /connection lost after 10 of 100 bytes/,
    ],
    ['a close before any answer', (s: Socket) => s.end(), /closed before an answer/],
    ['a reset', (s: Socket) => s.resetAndDestroy(), /ECONNRESET|closed before an answer/],
  ])('%s is a failure worth another try', async (_what, answer, message) => {
    const { url } = await rawServer(answer);
    const error = await failure(open(url).get({ start: 0, end: 99 }, Buffer.alloc(100)));
    expect(error.retryable).toBe(true);
    expect(error.message).toMatch(message);
  });

  it('is a failure worth another try when no byte comes for the idle time', async () => {
    const { url } = await rawServer(() => undefined);
    const error = await failure(open(url, 200).get({ start: 0, end: 99 }, Buffer.alloc(100)));
    expect(error).toMatchObject({ retryable: true, message: 'no data for 200 ms' });
  });

  it.each([
    [
      'bytes after the body',
      (a: number, b: number) => partial(a, b) + 'x'.repeat(101),
      /more than the 100 bytes/,
    ],
    [
      'a chunked range',
      (a: number, b: number) =>
        `HTTP/1.1 206 OK\r\nContent-Range: bytes ${a}-${b}/${data.length}\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n`,
      /Transfer-Encoding chunked/,
    ],
    [
      'no Content-Length',
      (a: number, b: number) => `HTTP/1.1 206 OK\r\nContent-Range: bytes ${a}-${b}/${data.length}\r\n\r\n`,
      /Content-Length \(none\)/,
    ],
    [
      'a Content-Length other than the range',
      (a: number, b: number) => partial(a, b).replace('Content-Length: 100', 'Content-Length: 99'),
      /Content-Length 99 for a Content-Range of 100/,
    ],
    [
      'two Content-Length headers',
      (a: number, b: number) => partial(a, b, 'Content-Length: 100\r\n'),
      /two content-length headers/,
    ],
    [
      'another range',
      (a: number, b: number) => partial(a + 1, b + 1),
      /unexpected Content-Range 'bytes 1-100\/300000' for 0-99/,
    ],
    [
      'a folded header line',
      (a: number, b: number) => partial(a, b, 'X-A: 1\r\n  folded\r\n'),
      /malformed header line/,
    ],
    [
      'a head of more than 64 KiB',
      () => `HTTP/1.1 206 OK\r\n${'X-Pad: y\r\n'.repeat(7000)}`,
      /head of more than 65536 bytes/,
    ],
    ['not HTTP', () => 'SSH-2.0-OpenSSH_9.2\r\n\r\n', /not an HTTP\/1.x answer/],
    // The next two never send the blank line ending an HTTP/1.1 head: they are refused at once, not when the
    // idle time ran out (which would be a failure worth another try).
    [
      'an HTTP/2 server (its SETTINGS frame)',
      () => '\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64',
      /not an HTTP\/1.x answer/,
    ],
    [
      'a head with bare LF line ends',
      (a: number, b: number) => partial(a, b).replaceAll('\r\n', '\n'),
      /a line of the answer head that does not end in CRLF/,
    ],
    ['a NUL in a header', (a: number, b: number) => partial(a, b, 'X-A: a\0b\r\n'), /malformed header line/],
    [
      'a space before a header colon',
      (a: number, b: number) => partial(a, b).replace('Content-Length:', 'Content-Length :'),
      /malformed header line/,
    ],
  ])('refuses %s, without another try', async (_what, answer, message) => {
    const { url } = await rawServer((socket, start, end) => socket.write(answer(start, end), 'latin1'));
    const c = open(url);
    const error = await failure(c.get({ start: 0, end: 99 }, Buffer.alloc(100)));
    expect(error).toMatchObject({ retryable: false, status: undefined });
    expect(error.message).toMatch(message);
    expect(c.usable).toBe(false);
  });

  it.each([503, 200, 403, 101])(
    'reports status %s as that status, without reading its body',
    async (status) => {
      const { url } = await rawServer((socket) =>
        socket.write(`HTTP/1.1 ${status} Whatever\r\nContent-Length: 5\r\n\r\nhello`),
      );
      const c = open(url);
      const error = await failure(c.get({ start: 0, end: 99 }, Buffer.alloc(100)));
      expect(error).toMatchObject({ status, message: `HTTP ${status}` });
      expect(c.usable).toBe(false);
    },
  );

  it('is not reused after Connection: close or an HTTP/1.0 answer', async () => {
    for (const variant of ['close', '1.0']) {
      const { url } = await rawServer((socket, start, end) => {
        const head =
          variant === 'close'
            ? partial(start, end, 'Connection: keep-alive, close\r\n')
            : partial(start, end).replace('HTTP/1.1', 'HTTP/1.0');
        socket.write(head);
        socket.write(data.subarray(start, end + 1));
      });
      const c = open(url);
      const into = Buffer.alloc(100);
      await c.get({ start: 0, end: 99 }, into);
      expect(into.equals(data.subarray(0, 100))).toBe(true);
      expect(c.usable).toBe(false);
      expect((await failure(c.get({ start: 100, end: 199 }, into))).message).toMatch(/cannot be reused/);
    }
  });

  it('is not reused when any of its Connection headers says close (node reads all of them)', async () => {
    const { url } = await rawServer((socket, start, end) => {
      socket.write(partial(start, end, 'Connection: close\r\nConnection: keep-alive\r\n'));
      socket.write(data.subarray(start, end + 1));
    });
    const c = open(url);
    await c.get({ start: 0, end: 99 }, Buffer.alloc(100));
    expect(c.usable).toBe(false);
  });

  it('tells a kept-alive connection lost before any byte of the next answer from one that never answered', async () => {
    const { url } = await rawServer((socket, start, end, index) => {
      // The first answer as it should be; the next request finds the connection closing under it.
      if (index !== 0) {
        socket.destroy();
        return;
      }
      socket.write(partial(start, end));
      socket.write(data.subarray(start, end + 1));
    });
    const c = open(url);
    await c.get({ start: 0, end: 99 }, Buffer.alloc(100));
    const error = await failure(c.get({ start: 100, end: 199 }, Buffer.alloc(100)));
    expect(error).toMatchObject({ retryable: true, staleConnection: true });
    // A new connection that loses its first request is a failure like any other.
    const fresh = await failure(open(url).get({ start: 100, end: 199 }, Buffer.alloc(100)));
    expect(fresh).toMatchObject({ retryable: true, staleConnection: false });
  });

  it('closes a kept-alive connection that receives bytes nobody asked for', async () => {
    const { url } = await rawServer((socket, start, end) => {
      socket.write(partial(start, end));
      socket.write(data.subarray(start, end + 1));
      setTimeout(() => socket.write('HTTP/1.1 206 smuggled\r\n\r\n'), 50);
    });
    const c = open(url);
    await c.get({ start: 0, end: 99 }, Buffer.alloc(100));
    await new Promise((settle) => setTimeout(settle, 300));
    expect(c.usable).toBe(false);
  });

  it('reads a body into the lent buffer up to its range and no further, whatever follows it on the wire', async () => {
    // Bodies are read straight into the lent buffer: bytes sent right behind one (here in the same write) must
    // neither land past its range nor be taken for it; they are seen with the body's last byte, and the answer
    // is refused as one with bytes after its body.
    const { url } = await rawServer((socket, start, end) => {
      socket.write(partial(start, end));
      setImmediate(() =>
        socket.write(
          Buffer.concat([data.subarray(start, end + 1), Buffer.from('HTTP/1.1 206 smuggled\r\n\r\n')]),
        ),
      );
    });
    const c = open(url);
    const into = Buffer.alloc(250_000, 0xaa);
    const error = await failure(c.get({ start: 1000, end: 200_999 }, into));
    expect(error).toMatchObject({
      retryable: false,
      message: expect.stringMatching(/more than the 200000 bytes/),
    });
    expect(into.subarray(200_000).every((b) => b === 0xaa)).toBe(true);
    expect(c.usable).toBe(false);
  });

  it('does not take a response sent right behind a long body for the answer to the next range asked at once', async () => {
    // The rest of a body is read straight into the lent buffer, exactly up to its range: whatever the server sent
    // behind it (here a whole forged answer, in the same write) must not wait in the socket to be read as the
    // answer to the next range, asked for as soon as the first is in (as RangePool does).
    const forged = Buffer.alloc(100, 0x66);
    const { url, stats } = await rawServer((socket, start, end) => {
      socket.write(
        Buffer.concat([
          Buffer.from(partial(start, end)),
          data.subarray(start, end + 1),
          Buffer.from(partial(end + 1, end + 100)),
          forged,
        ]),
      );
    });
    const c = open(url);
    const into = Buffer.alloc(50_000);
    const next = Buffer.alloc(100);
    const first = c.get({ start: 0, end: 49_999 }, into);
    const [a, b] = await Promise.allSettled([
      first,
      first.then(() => c.get({ start: 50_000, end: 50_099 }, next)),
    ]);
    expect(b.status).toBe('rejected');
    expect(next.equals(forged)).toBe(false);
    expect(a).toMatchObject({ status: 'rejected', reason: { message: /more than the 50000 bytes/ } });
    expect(stats.requests).toBe(1);
  });

  it('stops at once when the download is abandoned (its signal), closing the connection', async () => {
    const { url } = await rawServer((socket, start, end) => socket.write(partial(start, end)));
    const c = open(url);
    const abandon = new AbortController();
    const got = c.get({ start: 0, end: 99 }, Buffer.alloc(100), abandon.signal);
    setTimeout(() => abandon.abort(new Error('deadline')), 50);
    await expect(got).rejects.toThrow('deadline');
    expect(c.usable).toBe(false);
  });

  it('closed while its CONNECT tunnel is still unanswered, gives the tunnel up at once (no socket left to the timeout)', async () => {
    let proxySide: Socket | undefined;
    const connected = new Promise<void>((done) => {
      const silent = createServer((socket) => {
        proxySide = socket;
        socket.on('error', () => undefined);
        done();
      });
      servers.push(silent);
      silent.listen(0, '127.0.0.1');
    });
    await new Promise<void>((ready) => servers.at(-1)!.once('listening', ready));
    const port = (servers.at(-1)!.address() as AddressInfo).port;
    const settings = readProxySettings({ HTTPS_PROXY: `http://127.0.0.1:${port}` });
    const c = new RangeConnection(new URL('https://blobs.example/archive'), 60_000, settings);
    connections.push(c);
    await connected;
    const gone = new Promise((done) => proxySide!.once('close', done));
    c.close();
    await gone;
  }, 5000);

  it('reads over TLS, trusting what node trusts (here a test CA given by NODE_EXTRA_CA_CERTS)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ici-unit-range-tls-'));
    try {
      const ca = makeTestCa(dir);
      const port = await httpsRangeServer(ca);
      const url = `https://127.0.0.1:${port}/archive`;
      const script = `
        const c = new RangeConnection(new URL(process.argv[1]), 5000);
        const into = Buffer.alloc(200000);
        await c.get({ start: 0, end: 199999 }, into);
        await c.get({ start: 200000, end: 299999 }, into.subarray(100000));
        c.close();
        console.log(createHash('sha256').update(into).digest('hex'));`;
      const out = await nodeTrusting(ca.caCert, script, url);
      const expected = Buffer.concat([data.subarray(0, 100000), data.subarray(200000)]);
      expect(out).toBe(sha256(expected));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reads over TLS inside a CONNECT tunnel of the HTTPS_PROXY, first range and the ones after it alike', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ici-unit-range-proxy-'));
    const proxy = await startForwardProxy();
    try {
      const ca = makeTestCa(dir, 'ici-test', ['range.proxytest']);
      const port = await httpsRangeServer(ca);
      // A name only the proxy resolves: reaching it at all means the tunnel was used.
      const url = `https://range.proxytest:${port}/archive`;
      const script = `
        const pieces = [];
        await downloadInOrder(process.argv[1], async (p) => { for (const x of p) pieces.push(Buffer.from(x)); }, {
          chunkBytes: 100000, concurrency: 2, idleTimeoutMs: 5000, retryBudget: 0,
          retry: { retries: 0, baseDelayMs: 1, maxDelayMs: 1 }, maxBytes: 1e9 });
        console.log(createHash('sha256').update(Buffer.concat(pieces)).digest('hex'));`;
      const out = await nodeTrusting(ca.caCert, script, url, { HTTPS_PROXY: proxy.url, NO_PROXY: '' });
      expect(out).toBe(sha256(data));
      const tunnels = proxy.records.filter((r) => r.method === 'CONNECT');
      // The first range's agent, and at least one keep-alive range connection.
      expect(tunnels.length).toBeGreaterThanOrEqual(2);
      expect(tunnels.every((r) => r.target === new URL(url).host && r.status === 200)).toBe(true);
    } finally {
      await proxy.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a redirect of the archive from https to plain http is refused before the http URL is asked', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ici-unit-range-downgrade-'));
    try {
      let plainAsked = 0;
      const plain = createHttpServer((_req, res) => {
        plainAsked++;
        res.writeHead(200, { 'Content-Length': data.length }).end(data);
      });
      servers.push(plain);
      await new Promise<void>((ready) => plain.listen(0, '127.0.0.1', ready));
      const target = `http://127.0.0.1:${(plain.address() as AddressInfo).port}/archive?sig=secret`;
      const ca = makeTestCa(dir);
      const tls = createHttpsServer(
        { cert: readFileSync(ca.serverCert), key: readFileSync(ca.serverKey) },
        (_req, res) => res.writeHead(302, { Location: target, 'Content-Length': 0 }).end(),
      );
      servers.push(tls);
      await new Promise<void>((ready) => tls.listen(0, '127.0.0.1', ready));
      const url = `https://127.0.0.1:${(tls.address() as AddressInfo).port}/archive`;
      const script = `
        try {
          await downloadInOrder(process.argv[1], async () => undefined, {
            chunkBytes: 100000, concurrency: 2, idleTimeoutMs: 5000, retryBudget: 0,
            retry: { retries: 0, baseDelayMs: 1, maxDelayMs: 1 }, maxBytes: 1e9 });
          console.log('downloaded');
        } catch (e) { console.log(e.message); }`;
      expect(await nodeTrusting(ca.caCert, script, url)).toBe(
        `the archive URL redirected from https to plain http (${new URL(target).origin})`,
      );
      expect(plainAsked).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a range trickling under 1 KiB/s inside a CONNECT tunnel of the HTTPS_PROXY is a stall, as it is without the proxy', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ici-unit-range-proxy-'));
    const proxy = await startForwardProxy();
    try {
      const ca = makeTestCa(dir, 'ici-test', ['range.proxytest']);
      const tls = { cert: readFileSync(ca.serverCert), key: readFileSync(ca.serverKey) };
      const { url } = await rawServer(
        (socket, start, end) => trickle(socket, partial(start, end), data.subarray(start, end + 1)),
        tls,
      );
      const script = `
        const c = new RangeConnection(new URL(process.argv[1]), 300);
        const failed = await c.get({ start: 0, end: 99999 }, Buffer.alloc(100000)).then(() => 'read', (e) => e);
        c.close();
        console.log(JSON.stringify({ message: failed.message, retryable: failed.retryable }));`;
      const tunnelled = `https://range.proxytest:${url.port}/archive`;
      const out = await nodeTrusting(ca.caCert, script, tunnelled, { HTTPS_PROXY: proxy.url, NO_PROXY: '' });
      expect(JSON.parse(out)).toEqual({
        message: expect.stringMatching(/ in 0\.\d s, under 1\.0 KiB\/s \(stalled\)$/),
        retryable: true,
      });
      expect(proxy.records.filter((r) => r.method === 'CONNECT')).toHaveLength(1);
    } finally {
      await proxy.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reads long bodies over TLS whatever its records are cut at, and refuses one with bytes sent right behind it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ici-unit-range-tls-'));
    try {
      const ca = makeTestCa(dir);
      const tls = { cert: readFileSync(ca.serverCert), key: readFileSync(ca.serverKey) };
      const { url } = await rawServer((socket, start, end, index) => {
        const answer = Buffer.concat([Buffer.from(partial(start, end)), data.subarray(start, end + 1)]);
        if (index === 0) {
          // Records of every odd size around the 16 KiB most reads bring, each write one record or more.
          const sizes = [16_385, 1, 7, 4093, 16_384, 40_000];
          let at = 0;
          for (let i = 0; at < answer.length; i++)
            socket.write(answer.subarray(at, (at += sizes[i % sizes.length]!)));
        } else {
          socket.write(
            Buffer.concat([answer, Buffer.from(partial(end + 1, end + 100)), Buffer.alloc(100, 0x66)]),
          );
        }
      }, tls);
      const script = `
        const c = new RangeConnection(new URL(process.argv[1]), 5000);
        const into = Buffer.alloc(200000);
        await c.get({ start: 0, end: 199999 }, into);
        const next = Buffer.alloc(100);
        const first = c.get({ start: 200000, end: 249999 }, Buffer.alloc(50000));
        const [a, b] = await Promise.allSettled([first, first.then(() => c.get({ start: 250000, end: 250099 }, next))]);
        c.close();
        console.log(JSON.stringify({
          hash: createHash('sha256').update(into).digest('hex'),
          first: a.status === 'rejected' ? a.reason.message : a.status,
          second: b.status,
          forged: next.every((byte) => byte === 0x66),
        }));`;
      expect(JSON.parse(await nodeTrusting(ca.caCert, script, url))).toEqual({
        hash: sha256(data.subarray(0, 200_000)),
        first: expect.stringMatching(/more than the 50000 bytes/),
        second: 'rejected',
        forged: false,
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
