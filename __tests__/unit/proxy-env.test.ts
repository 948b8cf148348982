/**
 * The proxy environment read as Go's httpproxy reads it (the NO_PROXY table), and what the registry transport
 * makes of a proxy's refusals, against the real test forward proxy (no registry needed: the proxy answers
 * before any registry would be reached).
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { createServer } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { resolveFcosDisk } from '../../src/actions/preseed-podman-vm/fcos-stream.js';
import { childEnv } from '../../src/core/exec.js';
import { RegistryTransport } from '../../src/core/oci/transport.js';
import { DEFAULT_RETRY, TransientError } from '../../src/core/oci/retry.js';
import { downloadInOrder } from '../../src/core/ranged-download.js';
import {
  openTunnel,
  ProxyError,
  proxyFor,
  readProxySettings,
  type ProxyServer,
} from '../../src/core/proxy-env.js';
import { registerSecret } from '../../src/core/secrets.js';
import { sleep } from '../../src/core/process.js';
import { startForwardProxy, type ForwardProxy } from '../support/forward-proxy.js';

describe('proxy settings from the environment (Go httpproxy rules)', () => {
  const env = (noProxy: string) =>
    readProxySettings({
      HTTPS_PROXY: 'http://proxy.corp:3128',
      HTTP_PROXY: 'proxy.corp:8080',
      NO_PROXY: noProxy,
    });
  const proxied = (url: string, noProxy: string) => proxyFor(new URL(url), env(noProxy))?.name;

  it.each<[string, string, string | undefined]>([
    // [target, NO_PROXY, proxy used]
    ['https://ghcr.io/v2/', '', 'http://proxy.corp:3128'],
    ['http://ghcr.io/v2/', '', 'http://proxy.corp:8080'],
    ['https://ghcr.io/v2/', '*', undefined],
    ['https://ghcr.io/v2/', 'ghcr.io', undefined],
    ['https://a.b.ghcr.io/', 'ghcr.io', undefined],
    ['https://badghcr.io/', 'ghcr.io', 'http://proxy.corp:3128'],
    ['https://ghcr.io/', '.ghcr.io', 'http://proxy.corp:3128'],
    ['https://x.ghcr.io/', '.ghcr.io', undefined],
    ['https://x.ghcr.io/', '*.ghcr.io', undefined],
    ['https://GHCR.IO/', ' GhCr.Io ', undefined],
    ['https://reg.corp:5000/', 'reg.corp:5000', undefined],
    ['https://reg.corp:5001/', 'reg.corp:5000', 'http://proxy.corp:3128'],
    ['https://reg.corp/', 'reg.corp:443', undefined],
    ['https://10.1.2.3/', '10.0.0.0/8', undefined],
    ['https://11.1.2.3/', '10.0.0.0/8', 'http://proxy.corp:3128'],
    ['https://10.1.2.3:5000/', '10.1.2.3', undefined],
    ['https://10.1.2.3:5000/', '10.1.2.3:5001', 'http://proxy.corp:3128'],
    ['https://[fd00::5]:5000/', 'fd00::/8', undefined],
    ['https://[fd00::5]:5000/', '[fd00::5]:5000', undefined],
    ['https://[fd00::5]/', 'fd00:0::5', undefined],
    // loopback never goes through a proxy (Go and @actions/http-client agree)
    ['https://localhost:5000/', '', undefined],
    ['https://127.0.0.2:5000/', '', undefined],
    ['https://[::1]:5000/', '', undefined],
    ['https://sub.localhost/', '', 'http://proxy.corp:3128'],
    // `*` anywhere turns the proxy off; empty entries and spaces are nothing
    ['https://ghcr.io/', 'a.example, *', undefined],
    ['https://ghcr.io/', ' , ,ghcr.io,', undefined],
    // an empty port is no port (Go's SplitHostPort): the entry holds for every port
    ['https://reg.corp:5001/', 'reg.corp:', undefined],
    ['https://[fd00::5]:5001/', '[fd00::5]:', undefined],
    // trailing dots are compared as written (Go does not strip them)
    ['https://GHCR.IO./', 'ghcr.io', 'http://proxy.corp:3128'],
    ['https://ghcr.io/', 'ghcr.io.', 'http://proxy.corp:3128'],
    // an IPv4-mapped IPv6 address is the IPv4 address (Go's IP.Equal and IPNet.Contains)
    ['https://[::ffff:10.1.2.3]/', '10.1.2.3', undefined],
    ['https://[::ffff:10.1.2.3]/', '10.0.0.0/8', undefined],
    // a name entry never matches an address (Go's domainMatch), though it is a suffix of it
    ['https://10.1.2.3/', '2.3', 'http://proxy.corp:3128'],
    ['https://10.1.2.3/', '.1.2.3', 'http://proxy.corp:3128'],
  ])('%s with NO_PROXY=%j: %s', (target, noProxy, expected) => {
    expect(proxied(target, noProxy)).toBe(expected);
  });

  it('upper case wins, empty means unset, no fallback from https to HTTP_PROXY', () => {
    const s = readProxySettings({
      HTTPS_PROXY: '',
      https_proxy: 'http://lower:1',
      HTTP_PROXY: 'http://up:2',
      http_proxy: 'http://low:3',
    });
    expect(s.https?.name).toBe('http://lower:1');
    expect(s.http?.name).toBe('http://up:2');
    expect(
      proxyFor(new URL('https://x.example/'), readProxySettings({ HTTP_PROXY: 'http://p:1' })),
    ).toBeUndefined();
  });

  it('credentials become Basic proxy authorization and secrets, never part of the name', () => {
    const s = readProxySettings({ HTTPS_PROXY: 'http://us%40er:p%3Ass@proxy.corp:3128/' });
    expect(s.https?.name).toBe('http://proxy.corp:3128');
    expect(s.https?.authorization).toBe(`Basic ${Buffer.from('us@er:p:ss').toString('base64')}`);
    expect(s.https?.secrets).toEqual(expect.arrayContaining(['p:ss', 'p%3Ass']));
  });

  it('a malformed %-escape in the user or password: the variable is ignored as Go ignores it, no URIError', () => {
    const s = readProxySettings({
      HTTPS_PROXY: 'http://u:p%zz@proxy.corp:1',
      HTTP_PROXY: 'http://u%e0:p@proxy.corp:2',
    });
    expect(s.https).toBeUndefined();
    expect(s.http).toBeUndefined();
  });

  it('children keep the proxy variables though they hold the (registered) proxy password', () => {
    registerSecret('hunter2-proxy-secret');
    const out = childEnv({
      HTTPS_PROXY: 'http://u:hunter2-proxy-secret@p:1',
      OTHER: 'x hunter2-proxy-secret',
    });
    expect(out.HTTPS_PROXY).toBe('http://u:hunter2-proxy-secret@p:1');
    expect(out.OTHER).toBeUndefined();
  });
});

describe('the registry transport behind a refusing proxy (real forward proxy)', () => {
  let proxy: ForwardProxy;
  const saved = { ...process.env };

  beforeAll(async () => {
    proxy = await startForwardProxy();
    // Read once per process, on first use: set before any client exists.
    process.env.HTTPS_PROXY = proxy.url;
    process.env.HTTP_PROXY = proxy.url;
  });
  afterAll(async () => {
    for (const k of ['HTTPS_PROXY', 'HTTP_PROXY']) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
    await proxy.stop();
  });

  const ping = async () => {
    const transport = new RegistryTransport({
      registry: 'registry.proxytest:5999',
      retries: 2,
      retryBaseDelayMs: 1,
    });
    try {
      await transport.send({ method: 'GET', url: transport.url(''), ok: [200], what: 'ping' });
      return undefined;
    } catch (error) {
      return error;
    } finally {
      await transport.close();
    }
  };

  it.each([
    [403, false],
    [407, false],
    [502, true],
    [503, true],
  ])('CONNECT answered %i: retried %s, the error names the proxy and the status', async (status, retried) => {
    proxy.records.length = 0;
    proxy.refuse = status;
    const error = (await ping()) as Error;
    proxy.refuse = undefined;
    expect(error.message).toContain(
      `ping: proxy ${proxy.url} refused CONNECT registry.proxytest:5999: HTTP ${status}`,
    );
    expect(error).toBeInstanceOf(retried ? TransientError : ProxyError);
    expect(proxy.records.length).toBe(retried ? 3 : 1);
  });

  it('a proxy that hangs up on CONNECT: retried like a lost connection, named, no hang', async () => {
    proxy.records.length = 0;
    proxy.hangUp = true;
    const error = (await ping()) as Error;
    proxy.hangUp = false;
    expect(error).toBeInstanceOf(TransientError);
    expect(error.message).toContain(
      `ping: proxy ${proxy.url} closed the connection before answering CONNECT registry.proxytest:5999`,
    );
    expect(proxy.records.length).toBe(3);
  }, 10_000);

  it('a download given up while its CONNECT is unanswered leaves no connection to the proxy behind', async () => {
    proxy.records.length = 0;
    proxy.silent = true;
    const abandon = new AbortController();
    try {
      const download = downloadInOrder('https://files.proxytest:1/a', async () => undefined, {
        chunkBytes: 100_000,
        concurrency: 2,
        idleTimeoutMs: 60_000,
        retryBudget: 0,
        retry: { ...DEFAULT_RETRY, retries: 0 },
        maxBytes: 1e9,
        signal: abandon.signal,
      });
      while (proxy.records.length === 0) await sleep(10);
      abandon.abort(new Error('given up'));
      await expect(download).rejects.toThrow('given up');
      while (proxy.connections > 0) await sleep(10);
    } finally {
      proxy.silent = false;
    }
  }, 5000);

  it("preseed's Fedora CoreOS stream fetch goes through HTTP_PROXY (absolute form); a 407 names the proxy", async () => {
    const disk = { location: 'https://example.org/fcos.x86_64.qcow2.xz', sha256: 'a'.repeat(64) };
    const metadata = {
      architectures: {
        x86_64: { artifacts: { qemu: { release: '40.1', formats: { 'qcow2.xz': { disk } } } } },
      },
    };
    const server = createServer((_req, res) => res.end(JSON.stringify(metadata)));
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
    try {
      proxy.records.length = 0;
      // A name only the proxy resolves.
      const url = `http://fcos.proxytest:${(server.address() as AddressInfo).port}/streams/testing.json`;
      await expect(resolveFcosDisk(url, 'x86_64', 'qemu')).resolves.toMatchObject({ sha256: disk.sha256 });
      expect(proxy.records).toMatchObject([{ method: 'GET', path: '/streams/testing.json', status: 0 }]);
      proxy.refuse = 407;
      await expect(resolveFcosDisk(url, 'x86_64', 'qemu')).rejects.toThrow(
        `${url}: proxy ${proxy.url} refused ${new URL(url).origin}: HTTP 407 Proxy Authentication Required`,
      );
    } finally {
      proxy.refuse = undefined;
      server.closeAllConnections();
      await new Promise((done) => server.close(done));
    }
  });

  it("a cache archive URL's user and password go to the server as Authorization, never in the proxy's request line", async () => {
    const archive = Buffer.alloc(250_000, 0x5a);
    const seen: Array<string | undefined> = [];
    const server = createServer((req, res) => {
      seen.push(req.headers.authorization);
      const [, a, b] = /bytes=(\d+)-(\d+)/.exec(req.headers.range ?? '')!.map(Number) as [
        number,
        number,
        number,
      ];
      const end = Math.min(b, archive.length - 1);
      res.writeHead(206, {
        'content-range': `bytes ${a}-${end}/${archive.length}`,
        'content-length': end - a + 1,
      });
      res.end(archive.subarray(a, end + 1));
    });
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
    try {
      proxy.records.length = 0;
      const url = `http://us%40er:s3cret-pass@files.proxytest:${(server.address() as AddressInfo).port}/a?sig=x`;
      const pieces: Buffer[] = [];
      const result = await downloadInOrder(
        url,
        async (p) => void pieces.push(...p.map((x) => Buffer.from(x))),
        {
          chunkBytes: 100_000,
          concurrency: 2,
          idleTimeoutMs: 5000,
          retryBudget: 0,
          retry: { ...DEFAULT_RETRY, retries: 0 },
          maxBytes: 1e9,
        },
      );
      expect(result.ranges).toBe(3);
      expect(Buffer.concat(pieces).equals(archive)).toBe(true);
      const basic = `Basic ${Buffer.from('us@er:s3cret-pass').toString('base64')}`;
      expect(seen).toEqual([basic, basic, basic]);
      expect(proxy.records.map((r) => r.requestTarget)).toEqual(
        Array(3).fill(`http://files.proxytest:${(server.address() as AddressInfo).port}/a?sig=x`),
      );
    } finally {
      server.closeAllConnections();
      await new Promise((done) => server.close(done));
    }
  });

  it('an unreachable proxy: named, and retried like an unreachable registry', async () => {
    const url = proxy.url;
    await proxy.stop();
    const error = (await ping()) as Error;
    proxy = await startForwardProxy();
    process.env.HTTPS_PROXY = proxy.url;
    expect(error).toBeInstanceOf(TransientError);
    expect(error.message).toContain(`ping: cannot reach proxy ${url} (HTTPS_PROXY): connect ECONNREFUSED`);
  });
});

describe('openTunnel against a hostile proxy (raw scripted proxy)', () => {
  const servers: Server[] = [];
  const sockets = new Set<Socket>();
  afterEach(async () => {
    for (const socket of sockets) socket.destroy();
    for (const server of servers.splice(0)) await new Promise((done) => server.close(done));
  });

  /** A proxy that answers a CONNECT with whatever `answer` writes (it gets the request's head). */
  async function scriptedProxy(answer: (socket: Socket, head: string) => void): Promise<ProxyServer> {
    const server = createNetServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => undefined);
      let pending = '';
      const onData = (chunk: Buffer) => {
        pending += chunk.toString('latin1');
        const end = pending.indexOf('\r\n\r\n');
        if (end < 0) return;
        // What follows the request is the answer's business (an echo, say).
        socket.off('data', onData);
        answer(socket, pending.slice(0, end));
      };
      socket.on('data', onData);
    });
    servers.push(server);
    await new Promise<void>((ready) => server.listen(0, '127.0.0.1', ready));
    const port = (server.address() as AddressInfo).port;
    return readProxySettings({ HTTPS_PROXY: `http://u:tunnel-pw@127.0.0.1:${port}` }).https!;
  }
  const target = { hostname: 'registry.example', port: 443 };

  // Before: no error and no close handler, so the promise never settled and the job hung (the idle timer
  // died with the socket).
  it.each([
    ['without answering', ''],
    ['mid-answer', 'HTTP/1.1 200 Conn'],
  ])(
    'a proxy that hangs up %s: a retryable error at once, not a hang',
    async (_, said) => {
      const proxy = await scriptedProxy((socket) => socket.end(said));
      const error = (await openTunnel(proxy, target, 60_000).catch((e: unknown) => e)) as ProxyError;
      expect(error).toBeInstanceOf(ProxyError);
      expect(error.message).toBe(
        `proxy ${proxy.name} closed the connection before answering CONNECT registry.example:443`,
      );
      expect(error.retryable).toBe(true);
    },
    5000,
  );

  it('a header block dripped a byte at a time: the timeout bounds the whole answer', async () => {
    const proxy = await scriptedProxy((socket) => {
      socket.write('HTTP/1.1 200 OK\r\nX-Drip: ');
      const timer = setInterval(() => socket.write('a'), 30);
      socket.on('close', () => clearInterval(timer));
    });
    await expect(openTunnel(proxy, target, 300)).rejects.toThrow(
      /no answer to CONNECT registry.example:443 within 0.3 s/,
    );
  }, 5000);

  it('a status of more than three digits is no 200', async () => {
    const proxy = await scriptedProxy((socket) => socket.write('HTTP/1.1 2000 OK\r\n\r\n'));
    await expect(openTunnel(proxy, target, 2000)).rejects.toThrow(
      `proxy ${proxy.name} did not answer CONNECT registry.example:443 in HTTP.`,
    );
  }, 5000);

  it('lines ended by a bare LF are read as Go reads them: a 200 opens the tunnel, a 407 refuses at once', async () => {
    const open = await scriptedProxy((socket) => socket.write('HTTP/1.1 200 OK\nVia: 1.1 squid\n\n'));
    (await openTunnel(open, target, 60_000)).destroy();
    const refusing = await scriptedProxy((socket) => socket.write('HTTP/1.0 407 Who\r\nX: y\n\r\n'));
    await expect(openTunnel(refusing, target, 60_000)).rejects.toThrow('HTTP 407 Who');
  }, 5000);

  it("bytes sent with the 200 (a body, whatever its Content-Length says) are the proxy's: the tunnel starts after them", async () => {
    const proxy = await scriptedProxy((socket) => {
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n<html>');
      socket.on('data', (chunk: Buffer) => socket.write(`echo:${chunk.toString('latin1')}`));
    });
    const tunnel = await openTunnel(proxy, target, 2000);
    const first = new Promise<string>((done) => tunnel.once('data', (d: Buffer) => done(d.toString())));
    tunnel.write('hello');
    expect(await first).toBe('echo:hello');
    tunnel.destroy();
  }, 5000);

  it('a header block far over 64 KiB: refused', async () => {
    const proxy = await scriptedProxy((socket) =>
      socket.write(`HTTP/1.1 200 OK\r\nX: ${'a'.repeat(100_000)}`),
    );
    await expect(openTunnel(proxy, target, 2000)).rejects.toThrow(/too large/);
  }, 5000);

  it('a 407 whose reason phrase holds escapes and the proxy password: neither reaches the message', async () => {
    registerSecret('tunnel-pw');
    const proxy = await scriptedProxy((socket) =>
      socket.end('HTTP/1.1 407 \x1b[31m::add-mask::x\x07 tunnel-pw\r\nContent-Length: 5\r\n\r\n<b>x'),
    );
    const error = (await openTunnel(proxy, target, 2000).catch((e: unknown) => e)) as ProxyError;
    expect(error.message).toContain(`refused CONNECT registry.example:443: HTTP 407`);
    expect(error.message).not.toMatch(/[\p{Cc}\p{Cf}]|tunnel-pw/u);
    expect(error.retryable).toBe(false);
  }, 5000);

  it('the CONNECT request names only host:port (brackets for IPv6), with the proxy credentials', async () => {
    let seen = '';
    const proxy = await scriptedProxy((socket, head) => {
      seen = head;
      socket.end('HTTP/1.1 403 Forbidden\r\n\r\n');
    });
    await expect(openTunnel(proxy, { hostname: 'fd00::1', port: '5000' }, 2000)).rejects.toThrow(/HTTP 403/);
    expect(seen).toBe(
      `CONNECT [fd00::1]:5000 HTTP/1.1\r\nHost: [fd00::1]:5000\r\nProxy-Authorization: ${proxy.authorization}`,
    );
  }, 5000);
});
