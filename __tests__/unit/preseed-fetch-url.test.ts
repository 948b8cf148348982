/**
 * downloadUrl (@actions/tool-cache, which has no timeout of its own) against a local server that goes silent:
 * before its headers, and mid-body. The stall watch must end both, saying which URL made no progress.
 */
import { afterAll, afterEach, expect, it } from '@jest/globals';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CliHost } from '../../src/core/host.js';
import { MapInputSource } from '../../src/core/inputs.js';
import { downloadUrl } from '../../src/actions/preseed-podman-vm/fetch-url.js';

const tmp = mkdtempSync(join(tmpdir(), 'preseed-fu-'));
const host = new CliHost({ inputs: new MapInputSource({}), log: () => undefined, out: () => undefined });
const held: ServerResponse[] = [];
let close: (() => Promise<void>) | undefined;
afterEach(async () => {
  for (const res of held.splice(0)) res.destroy();
  await close?.();
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function serve(answer: (res: ServerResponse) => void): Promise<string> {
  const server = createServer((_req, res) => {
    held.push(res);
    answer(res);
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  close = async () => {
    server.closeAllConnections();
    await new Promise((done) => server.close(done));
  };
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/disk.qcow2.xz`;
}

it('a server that never answers: the download fails after the stall time, naming the URL', async () => {
  const url = await serve(() => undefined);
  await expect(downloadUrl(host, url, join(tmp, 'a'), 1500)).rejects.toThrow(
    `download of ${url} made no progress for 2 s`,
  );
});

it('a server that stops mid-body: the download fails after the stall time, naming the URL', async () => {
  const url = await serve((res) => {
    res.writeHead(200, { 'content-length': String(1024 * 1024) });
    res.write(Buffer.alloc(64 * 1024));
  });
  await expect(downloadUrl(host, url, join(tmp, 'b'), 1500)).rejects.toThrow(
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
  await expect(downloadUrl(host, url, join(tmp, 'c'), 1500)).rejects.toThrow(
    new RegExp(
      `^download of ${url.replace(/[.]/g, '\\.')}: only \\d+ B in [\\d.]+ s, under 1\\.0 KiB/s \\(stalled\\)$`,
    ),
  );
});
