/**
 * preseed-podman-vm's registry download on a failing link: the built action (dist) pulls a fake machine-os disk
 * from a real docker-registry through a relay that cuts the blob GET part-way. The download resumes with Range
 * (the registry answers 206), so the disk crosses the link about once and progress never passes 100 %. And
 * behind a company proxy: the disk reachable only through the test's forward proxy, under `*.proxytest` names
 * nothing else resolves, so a download that lands used the proxy.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PROXY_ENV_VARS } from '../../src/core/proxy-env.js';
import { startForwardProxy, type ForwardProxy } from '../support/forward-proxy.js';
import { runAction } from '../support/harness.js';
import { buildMachineOsLayout, publishMachineOs, type FakeMachineOs } from '../support/machine-os.js';
import { startProxy, type CountingProxy } from '../support/proxy.js';
import { startRegistry, type RegistryService } from '../support/registry.js';

const REPO = 'podman/machine-os';
let work: string;
let registry: RegistryService;
let relay: CountingProxy;
let fake: FakeMachineOs;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'ici-pvm-dl-'));
  registry = await startRegistry();
  fake = buildMachineOsLayout(join(work, 'layout'), { diskBytes: 1024 * 1024, disks: [['x86_64', 'qemu']] });
  await publishMachineOs(fake, registry.host, REPO, '5.3');
  const cutAt = Math.floor(fake.disk('x86_64', 'qemu').blobSize * 0.4);
  relay = await startProxy({
    target: registry.host,
    fault: ({ kind, index }) =>
      kind === 'blob-get' && index === 0 ? { drop: 'mid-response', afterBytes: cutAt } : undefined,
  });
});
afterAll(async () => {
  await relay?.stop();
  await registry?.stop();
  rmSync(work, { recursive: true, force: true });
});

/** The built action pulling `image` without its cache, in job dirs of its own named `name`. */
async function preseedFrom(image: string, name: string, env: Record<string, string | undefined> = {}) {
  const dirs = {
    runnerTemp: join(work, `temp-${name}`),
    home: join(work, `home-${name}`),
    workspace: join(work, `ws-${name}`),
  };
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
  return runAction({
    // The action's cache path stays for the next job's save or restore.
    keepInRunnerTemp: ['ici-pvm'],
    action: 'preseed-podman-vm',
    inputs: { image, cache: 'false' },
    env: { XDG_DATA_HOME: undefined, ...env },
    ...dirs,
  });
}

it('a disk download cut mid-body resumes with Range: the disk crosses the link ~once, progress ends at 100 %', async () => {
  const disk = fake.disk('x86_64', 'qemu');
  const r = await preseedFrom(`docker://${relay.host}/${REPO}:5.3`, 'cut');
  expect(r.errors).toEqual([]);
  expect(r.main.exitCode).toBe(0);
  expect(readFileSync(r.outputs['image-path']!).equals(readFileSync(disk.blobPath))).toBe(true);
  const gets = relay.records.filter((rec) => rec.kind === 'blob-get');
  expect(gets.map((g) => g.status)).toEqual([200, 206]);
  expect(gets.reduce((n, g) => n + g.bytesDown, 0)).toBeLessThanOrEqual(1.1 * disk.blobSize);
  const percents = [...r.log.matchAll(/Downloading [^:]+: .* \((\d+)%\)/g)].map((m) => Number(m[1]));
  expect(percents.at(-1)).toBe(100);
  expect(Math.max(...percents)).toBe(100);
});

it('a disk title carrying a terminal escape, a bidi override and a forged workflow command reaches the log inert', async () => {
  const hostile = buildMachineOsLayout(join(work, 'hostile'), {
    diskBytes: 64 * 1024,
    disks: [['x86_64', 'qemu']],
    title: () => 'disk\u001b[2K\u001b[1Ahidden\u202etxt.exe\n::error::forged.qcow2.zst',
  });
  await publishMachineOs(hostile, registry.host, 'podman/hostile-title', '5.3');
  const r = await preseedFrom(`docker://${registry.host}/podman/hostile-title:5.3`, 'hostile');
  expect(r.main.exitCode).toBe(0);
  expect(r.errors).toEqual([]);
  // The title is still shown (it says which disk this is), as text: no escape, no reordering, one line.
  expect(r.log).toMatch(/Downloading disk.*hidden.*txt\.exe ::error::forged\.qcow2\.zst: /);
  expect(r.log).not.toContain('\u001b');
  expect(r.log).not.toContain('\u202e');
});

it('a disk over a slow but steady link (1 MB/s) arrives at the first try; progress ends at 100 % with a sane rate', async () => {
  const disk = fake.disk('x86_64', 'qemu');
  const slow = await startProxy({
    target: registry.host,
    fault: ({ kind }) => (kind === 'blob-get' ? { throttleBytesPerSecond: 1_000_000 } : undefined),
  });
  try {
    const r = await preseedFrom(`docker://${slow.host}/${REPO}:5.3`, 'steady');
    expect(r.errors).toEqual([]);
    expect(r.main.exitCode).toBe(0);
    expect(readFileSync(r.outputs['image-path']!).equals(readFileSync(disk.blobPath))).toBe(true);
    expect(slow.records.filter((rec) => rec.kind === 'blob-get').map((g) => g.status)).toEqual([200]);
    const done = /Downloading [^:]+: .* \((\d+)%\) at ([\d.]+) (KiB|MiB)\/s, done in /.exec(r.log);
    expect(done?.[1]).toBe('100');
    const rate = Number(done![2]) * (done![3] === 'MiB' ? 1024 * 1024 : 1024);
    expect(rate).toBeGreaterThan(100_000);
    expect(rate).toBeLessThan(1_500_000);
  } finally {
    await slow.stop();
  }
});

describe('behind a company proxy (a real forward proxy; nothing else resolves *.proxytest)', () => {
  const NAME = 'registry.proxytest';
  let tlsRegistry: RegistryService;
  let proxy: ForwardProxy;
  let files: Server;
  let filesPort: number;
  /** Only the variables a test names: none inherited from the machine. */
  const onlyProxy = (env: Record<string, string>) => ({
    ...Object.fromEntries(PROXY_ENV_VARS.map((name) => [name, undefined])),
    ...env,
  });

  beforeAll(async () => {
    [tlsRegistry, proxy] = await Promise.all([
      startRegistry({ tls: 'server', proxiedName: NAME }),
      startForwardProxy(),
    ]);
    await publishMachineOs(fake, tlsRegistry.host, REPO, '5.3', { tlsVerify: false });
    const disk = readFileSync(fake.disk('x86_64', 'qemu').blobPath);
    files = createServer((req, res) => {
      if (req.url === '/images/disk.qcow2.zst')
        res.writeHead(200, { 'content-length': disk.length }).end(disk);
      else res.writeHead(404).end();
    });
    await new Promise<void>((r) => files.listen(0, '127.0.0.1', r));
    filesPort = (files.address() as AddressInfo).port;
  });
  afterAll(async () => {
    files?.closeAllConnections();
    await new Promise((r) => files?.close(r));
    await Promise.all([tlsRegistry?.stop(), proxy?.stop()]);
  });

  it('a registry disk comes through HTTPS_PROXY: index, manifest and blob inside CONNECT tunnels', async () => {
    proxy.records.length = 0;
    const port = tlsRegistry.host.split(':')[1]!;
    // The registry's CA trusted as a runner trusts a company CA.
    const env = onlyProxy({ HTTPS_PROXY: proxy.url, NODE_EXTRA_CA_CERTS: tlsRegistry.ca!.caCert });
    const r = await preseedFrom(`docker://${NAME}:${port}/${REPO}:5.3`, 'proxied-registry', env);
    expect(r.errors).toEqual([]);
    expect(r.main.exitCode).toBe(0);
    expect(
      readFileSync(r.outputs['image-path']!).equals(readFileSync(fake.disk('x86_64', 'qemu').blobPath)),
    ).toBe(true);
    expect(proxy.records.length).toBeGreaterThan(0);
    expect(proxy.records.every((rec) => rec.method === 'CONNECT' && rec.target === `${NAME}:${port}`)).toBe(
      true,
    );
  });

  it('a URL disk comes through HTTP_PROXY in absolute form', async () => {
    proxy.records.length = 0;
    const url = `http://disk.proxytest:${filesPort}/images/disk.qcow2.zst`;
    const r = await preseedFrom(url, 'proxied-url', onlyProxy({ HTTP_PROXY: proxy.url }));
    expect(r.errors).toEqual([]);
    expect(r.main.exitCode).toBe(0);
    expect(
      readFileSync(r.outputs['image-path']!).equals(readFileSync(fake.disk('x86_64', 'qemu').blobPath)),
    ).toBe(true);
    expect(proxy.records.map((rec) => `${rec.method} ${rec.requestTarget}`)).toEqual([`GET ${url}`]);
  });
});
