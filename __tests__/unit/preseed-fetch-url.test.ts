/**
 * downloadUrl against a local server that goes silent (before its headers, and mid-body: the stall watch ends
 * both, saying which URL made no progress), that sends more than it announces, or more than the disk holds; and
 * the counting that holds a body to its Content-Length or the download limit.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { gzipSync } from 'node:zlib';
import { join } from 'node:path';
import { Agent, getGlobalDispatcher, setGlobalDispatcher } from 'undici';
import { CliHost } from '../../src/core/host.js';
import { InputError, MapInputSource } from '../../src/core/inputs.js';
import {
  boundedBody,
  DEFAULT_DOWNLOAD_MAX_BYTES,
  downloadSizeLimit,
  downloadUrl,
} from '../../src/actions/preseed-podman-vm/fetch-url.js';
import { makeTestCa } from '../support/test-ca.js';

const tmp = mkdtempSync(join(tmpdir(), 'preseed-fu-'));
const host = new CliHost({ inputs: new MapInputSource({}), log: () => undefined, out: () => undefined });
const held: ServerResponse[] = [];
let close: (() => Promise<void>) | undefined;
afterEach(async () => {
  for (const res of held.splice(0)) res.destroy();
  await close?.();
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A host whose log lines (secrets masked, as CliHost prints them) the test reads. */
function loggingHost(): { logged: CliHost; lines: string[] } {
  const lines: string[] = [];
  const logged = new CliHost({
    inputs: new MapInputSource({}),
    log: (l) => lines.push(l),
    out: () => undefined,
  });
  return { logged, lines };
}

async function serve(answer: (res: ServerResponse) => void, name = 'disk.qcow2.xz'): Promise<string> {
  const server = createServer((_req, res) => {
    held.push(res);
    answer(res);
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  close = async () => {
    server.closeAllConnections();
    await new Promise((done) => server.close(done));
  };
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/${name}`;
}

it('a server that never answers: the download fails after the stall time, naming the URL', async () => {
  const url = await serve(() => undefined);
  await expect(downloadUrl(host, url, join(tmp, 'a'), { stallMs: 1500 })).rejects.toThrow(
    `download of ${url} made no progress for 2 s`,
  );
});

it('a server that stops mid-body: the download fails after the stall time, naming the URL', async () => {
  const url = await serve((res) => {
    res.writeHead(200, { 'content-length': String(1024 * 1024) });
    res.write(Buffer.alloc(64 * 1024));
  });
  await expect(downloadUrl(host, url, join(tmp, 'b'), { stallMs: 1500 })).rejects.toThrow(
    `download of ${url} made no progress for 2 s`,
  );
});

it('a server that trickles under 1 KiB/s (never silent for the stall time): the download fails as stalled, naming the URL', async () => {
  const url = await serve((res) => {
    res.writeHead(200, { 'content-length': String(1024 * 1024) });
    // 20 bytes every 50 ms; cut after 4 s, so that a watch without the limit ends too.
    const drip = setInterval(() => res.write(Buffer.alloc(20)), 50);
    const cut = setTimeout(() => res.destroy(), 4000);
    res.on('close', () => {
      clearInterval(drip);
      clearTimeout(cut);
    });
  });
  await expect(downloadUrl(host, url, join(tmp, 'c'), { stallMs: 1500 })).rejects.toThrow(
    new RegExp(
      `^download of ${url.replace(/[.]/g, '\\.')}: only \\d+ B in [\\d.]+ s, under 1\\.0 KiB/s \\(stalled\\)$`,
    ),
  );
});

async function collect<T>(source: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of source) out.push(item);
  return out;
}

describe('boundedBody: the count that holds a body to what was announced, or to the limit', () => {
  const chunks = [Buffer.alloc(600), Buffer.alloc(600), Buffer.alloc(600)];

  it('passes a body of exactly the announced size', async () => {
    expect(await collect(boundedBody(chunks, 'U', 1800, 10_000))).toHaveLength(3);
  });

  it('stops a body longer than its Content-Length before the chunk that passes it, naming both sizes', async () => {
    const passed: Buffer[] = [];
    await expect(
      (async () => {
        for await (const c of boundedBody(chunks, 'http://h/x', 1000, 10_000)) passed.push(c);
      })(),
    ).rejects.toThrow(
      'http://h/x sent more than the 1000 bytes its Content-Length announces (1200 so far); download stopped.',
    );
    expect(passed).toHaveLength(1);
  });

  it('stops a body without Content-Length at the limit, saying how to raise it', async () => {
    await expect(collect(boundedBody(chunks, 'http://h/x', undefined, 1000))).rejects.toThrow(
      'http://h/x sent more than the download limit of 1000 B (1000 bytes) without announcing a size; download stopped. Raise IMAGE_CI_DOWNLOAD_MAX_SIZE (e.g. 16GiB) if the image is that large.',
    );
  });
});

describe('IMAGE_CI_DOWNLOAD_MAX_SIZE', () => {
  it('defaults to 8 GiB, takes a size with a unit, and refuses a bare number as an input error', () => {
    expect(downloadSizeLimit({})).toBe(DEFAULT_DOWNLOAD_MAX_BYTES);
    expect(DEFAULT_DOWNLOAD_MAX_BYTES).toBe(8 * 1024 ** 3);
    expect(downloadSizeLimit({ IMAGE_CI_DOWNLOAD_MAX_SIZE: '16GiB' })).toBe(16 * 1024 ** 3);
    expect(() => downloadSizeLimit({ IMAGE_CI_DOWNLOAD_MAX_SIZE: '20' })).toThrow(
      new InputError(
        'IMAGE_CI_DOWNLOAD_MAX_SIZE',
        "'20' has no unit; write 20GiB, 20GB or 20MiB.",
        'environment',
      ),
    );
  });
});

it("a body longer than its Content-Length: node's HTTP parser ends it there, so only the announced bytes are kept", async () => {
  const announced = Buffer.alloc(4096, 1);
  const url = await serve((res) => {
    // Raw bytes: node's server would not send more than the header it wrote.
    res.socket!.write(`HTTP/1.1 200 OK\r\ncontent-length: ${announced.length}\r\n\r\n`);
    res.socket!.write(announced);
    res.socket!.write(Buffer.alloc(1024 * 1024, 2));
    res.socket!.end();
  });
  const dest = join(tmp, 'over');
  expect(await downloadUrl(host, url, dest, { maxBytes: 1024 ** 3 })).toBe(announced.length);
  expect(readFileSync(dest).equals(announced)).toBe(true);
  rmSync(dest);
});

it('a Content-Length over the download limit is refused before the body, naming both sizes and the knob', async () => {
  const url = await serve((res) => {
    res.writeHead(200, { 'content-length': String(3 * 1024 * 1024) });
    res.write(Buffer.alloc(64 * 1024));
  });
  const dest = join(tmp, 'limit');
  await expect(downloadUrl(host, url, dest, { maxBytes: 1024 * 1024 })).rejects.toThrow(
    `${url} announces 3.0 MiB (3145728 bytes), more than the download limit of 1.0 MiB (1048576 bytes); download refused. Raise IMAGE_CI_DOWNLOAD_MAX_SIZE if the image is that large.`,
  );
  expect(existsSync(dest)).toBe(false);
});

it("a .raw.gz a mirror labels Content-Encoding: gzip is kept as sent (as tool-cache did), not decoded: its bytes, size and sha256 are the published file's", async () => {
  const file = Buffer.alloc(256 * 1024, 3);
  const encoded = gzipSync(file);
  let asked: string | undefined;
  const url = await serve((res) => {
    asked = res.req.headers['accept-encoding'];
    res.writeHead(200, { 'content-encoding': 'gzip', 'content-length': encoded.length }).end(encoded);
  }, 'disk.raw.gz');
  const { logged, lines } = loggingHost();
  const dest = join(tmp, 'encoded');
  expect(await downloadUrl(logged, url, dest, { maxBytes: 1024 * 1024 })).toBe(encoded.length);
  expect(readFileSync(dest).equals(encoded)).toBe(true);
  expect(asked).toBe('identity');
  expect(lines).toContain(
    `${url} comes with Content-Encoding: gzip; kept as sent (not decoded), as the file's own bytes.`,
  );
  rmSync(dest);
});

describe('redirects', () => {
  it('are followed (a release asset to its storage host), but a loop is refused after 10 and not tried again', async () => {
    const asked: string[] = [];
    const url = await serve((res) => {
      const path = res.req.url ?? '';
      asked.push(path);
      if (path === '/asset') res.writeHead(302, { location: '/storage/disk.raw?sig=1' }).end();
      else if (path.startsWith('/storage/')) res.writeHead(200, { 'content-length': 3 }).end('abc');
      else res.writeHead(301, { location: `/loop${asked.length}` }).end();
    }, 'asset');
    expect(await downloadUrl(host, url, join(tmp, 'asset'), {})).toBe(3);
    expect(readFileSync(join(tmp, 'asset'), 'utf8')).toBe('abc');
    rmSync(join(tmp, 'asset'));
    asked.length = 0;
    await expect(downloadUrl(host, url.replace('/asset', '/loop'), join(tmp, 'loop'))).rejects.toThrow(
      `download of ${url.replace('/asset', '/loop')}: more than 10 redirects; download refused.`,
    );
    expect(asked).toHaveLength(11);
    expect(existsSync(join(tmp, 'loop'))).toBe(false);
  });

  it('a URL with user:password@ sends them as Basic auth to its own host only, not to the host it redirects to, and never names the password', async () => {
    const sent: Record<string, string | undefined> = {};
    const storage = createServer((req, res) => {
      sent.storage = req.headers.authorization;
      res.writeHead(200, { 'content-length': 3 }).end('abc');
    });
    await new Promise<void>((done) => storage.listen(0, '127.0.0.1', done));
    try {
      const to = `http://127.0.0.1:${(storage.address() as AddressInfo).port}/disk.raw`;
      const url = await serve((res) => {
        sent.origin = res.req.headers.authorization;
        res.writeHead(302, { location: to }).end();
      }, 'private/disk.raw');
      const { logged, lines } = loggingHost();
      const withUser = url.replace('http://', 'http://bob:hunt%40er2@');
      expect(await downloadUrl(logged, withUser, join(tmp, 'private'))).toBe(3);
      expect(sent).toEqual({
        origin: `Basic ${Buffer.from('bob:hunt@er2').toString('base64')}`,
        storage: undefined,
      });
      expect(lines.join('\n')).toContain(`Downloading ${url}`);
      expect(lines.join('\n')).not.toMatch(/hunt/);
      rmSync(join(tmp, 'private'));
    } finally {
      storage.closeAllConnections();
      await new Promise((done) => storage.close(done));
    }
  });

  it('from https to plain http is refused before the http URL is asked, as tool-cache did [test CA trusted through the global dispatcher]', async () => {
    let plainAsked = false;
    const target = await serve((res) => {
      plainAsked = true;
      res.writeHead(200, { 'content-length': 3 }).end('bad');
    }, 'disk.raw?sig=secret');
    const dir = mkdtempSync(join(tmp, 'ca-'));
    const ca = makeTestCa(dir);
    const tls = createHttpsServer(
      { cert: readFileSync(ca.serverCert), key: readFileSync(ca.serverKey) },
      (_req, res) => res.writeHead(302, { location: target }).end(),
    );
    await new Promise<void>((done) => tls.listen(0, '127.0.0.1', done));
    const before = getGlobalDispatcher();
    const trusting = new Agent({ connect: { ca: readFileSync(ca.caCert) } });
    setGlobalDispatcher(trusting);
    try {
      const url = `https://127.0.0.1:${(tls.address() as AddressInfo).port}/disk.raw`;
      await expect(downloadUrl(host, url, join(tmp, 'downgrade'))).rejects.toThrow(
        `download of ${url}: ${new URL(url).origin} redirected from https to plain http (${new URL(target).origin}); download refused.`,
      );
      expect(plainAsked).toBe(false);
      expect(existsSync(join(tmp, 'downgrade'))).toBe(false);
    } finally {
      setGlobalDispatcher(before);
      await trusting.close();
      tls.closeAllConnections();
      await new Promise((done) => tls.close(done));
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** A 2 MiB tmpfs (needs root): a filesystem small enough to fill. Unmounted in afterAll. */
describe('a destination filesystem too small for the download [2 MiB tmpfs]', () => {
  const small = join(tmp, 'small');
  beforeAll(() => {
    mkdirSync(small);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', small]);
  });
  afterAll(() => {
    execFileSync('umount', [small]);
  });

  it('an announced size over the free space is refused before the body is read, naming both sizes', async () => {
    const url = await serve((res) => {
      res.writeHead(200, { 'content-length': String(4 * 1024 * 1024) });
      res.write(Buffer.alloc(64 * 1024));
    });
    await expect(downloadUrl(host, url, join(small, 'a'), { maxBytes: 1024 ** 3 })).rejects.toThrow(
      new RegExp(
        `^${url.replace(/[.]/g, '\\.')}: the download is 4\\.0 MiB \\(4194304 bytes\\) but ${small} has only [\\d.]+ \\w+ \\(\\d+ bytes\\) free\\. Download refused before its first byte\\.$`,
      ),
    );
    expect(readdirSync(small)).toEqual([]);
  });

  it('a body of unknown length that fills the disk fails saying so, and leaves no partial file', async () => {
    const url = await serve((res) => {
      res.writeHead(200);
      const chunk = Buffer.alloc(64 * 1024);
      const more = () => {
        while (!res.destroyed) if (!res.write(chunk)) return void res.once('drain', more);
      };
      more();
    });
    await expect(downloadUrl(host, url, join(small, 'b'), { maxBytes: 1024 ** 3 })).rejects.toThrow(
      new RegExp(
        `^${small} is full after [\\d.]+ \\w+ \\(\\d+ bytes\\) of ${url.replace(/[.]/g, '\\.')}; download stopped\\.$`,
      ),
    );
    expect(existsSync(join(small, 'b'))).toBe(false);
  });
});
