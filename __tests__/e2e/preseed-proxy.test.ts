/**
 * preseed-podman-vm behind a company proxy: the built action (dist) reaches its disk only through the test's
 * forward proxy, under `*.proxytest` names that nothing else resolves, so a download that lands used the proxy.
 * The registry disk goes through a CONNECT tunnel (a real docker-registry over https, its CA trusted through
 * NODE_EXTRA_CA_CERTS, as a runner trusts a company CA); a plain http URL goes in absolute form.
 */
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startForwardProxy, type ForwardProxy } from '../support/forward-proxy.js';
import { runAction } from '../support/harness.js';
import { buildMachineOsLayout, publishMachineOs, type FakeMachineOs } from '../support/machine-os.js';
import { startRegistry, type RegistryService } from '../support/registry.js';

const REPO = 'podman/machine-os';
const NAME = 'registry.proxytest';
let work: string;
let registry: RegistryService;
let proxy: ForwardProxy;
let fake: FakeMachineOs;
let files: Server;
let filesPort: number;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'ici-pvm-proxy-'));
  [registry, proxy] = await Promise.all([
    startRegistry({ tls: 'server', proxiedName: NAME }),
    startForwardProxy(),
  ]);
  fake = buildMachineOsLayout(join(work, 'layout'), { diskBytes: 64 * 1024, disks: [['x86_64', 'qemu']] });
  await publishMachineOs(fake, registry.host, REPO, '5.3', { tlsVerify: false });
  const disk = readFileSync(fake.disk('x86_64', 'qemu').blobPath);
  files = createServer((req, res) => {
    if (req.url === '/images/disk.qcow2.zst') res.writeHead(200, { 'content-length': disk.length }).end(disk);
    else res.writeHead(404).end();
  });
  await new Promise<void>((r) => files.listen(0, '127.0.0.1', r));
  filesPort = (files.address() as AddressInfo).port;
});

afterAll(async () => {
  files?.closeAllConnections();
  await new Promise((r) => files?.close(r));
  await Promise.all([registry?.stop(), proxy?.stop()]);
  rmSync(work, { recursive: true, force: true });
});

/** The built action getting `image` without its cache, with only `proxyEnv` naming a proxy. */
async function preseedThroughProxy(image: string, name: string, proxyEnv: Record<string, string>) {
  const dirs = {
    runnerTemp: join(work, `temp-${name}`),
    home: join(work, `home-${name}`),
    workspace: join(work, `ws-${name}`),
  };
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
  return runAction({
    keepInRunnerTemp: ['ici-pvm'],
    action: 'preseed-podman-vm',
    inputs: { image, cache: 'false' },
    env: {
      XDG_DATA_HOME: undefined,
      HTTPS_PROXY: undefined,
      https_proxy: undefined,
      HTTP_PROXY: undefined,
      http_proxy: undefined,
      NO_PROXY: undefined,
      no_proxy: undefined,
      ...proxyEnv,
    },
    ...dirs,
  });
}

it('a registry disk comes through HTTPS_PROXY: index, manifest and blob inside CONNECT tunnels', async () => {
  proxy.records.length = 0;
  const port = registry.host.split(':')[1]!;
  const r = await preseedThroughProxy(`docker://${NAME}:${port}/${REPO}:5.3`, 'registry', {
    HTTPS_PROXY: proxy.url,
    NODE_EXTRA_CA_CERTS: registry.ca!.caCert,
  });
  expect(r.errors).toEqual([]);
  expect(r.main.exitCode).toBe(0);
  expect(readFileSync(r.outputs['image-path']!).equals(readFileSync(fake.disk('x86_64', 'qemu').blobPath))).toBe(
    true,
  );
  expect(proxy.records.length).toBeGreaterThan(0);
  expect(proxy.records.every((rec) => rec.method === 'CONNECT' && rec.target === `${NAME}:${port}`)).toBe(true);
});

it('a URL disk comes through HTTP_PROXY in absolute form', async () => {
  proxy.records.length = 0;
  const url = `http://disk.proxytest:${filesPort}/images/disk.qcow2.zst`;
  const r = await preseedThroughProxy(url, 'url', { HTTP_PROXY: proxy.url });
  expect(r.errors).toEqual([]);
  expect(r.main.exitCode).toBe(0);
  expect(readFileSync(r.outputs['image-path']!).equals(readFileSync(fake.disk('x86_64', 'qemu').blobPath))).toBe(
    true,
  );
  expect(proxy.records.map((rec) => `${rec.method} ${rec.requestTarget}`)).toEqual([`GET ${url}`]);
});
