/**
 * preseed-podman-vm end to end: the built action (dist) against a real docker-registry holding a fake machine-os
 * index and the local Actions cache service driven by the real @actions/cache. The tests run in order: cold run,
 * corrupted cache entry, concurrent saves, then the registry is stopped for the offline runs.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer, request as httpRequest, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { buildCacheKey } from '../../src/core/cache-key.js';
import { formatBytes } from '../../src/core/summary.js';
import { CacheService, laterRun } from '../support/cache-service.js';
import { PROXY_TEST_DOMAIN, startForwardProxy } from '../support/forward-proxy.js';
import {
  REPO_ROOT,
  runAction,
  runnerTempLeftovers,
  secretOnlyAfterMask,
  type RunResult,
} from '../support/harness.js';
import { buildMachineOsLayout, publishMachineOs, type FakeMachineOs } from '../support/machine-os.js';
import { startRegistry, type RegistryService } from '../support/registry.js';
import { hostPodman, stepScripts, testUser } from '../support/podman-matrix.js';

const ACTION = 'preseed-podman-vm';
const execFileAsync = promisify(execFile);
const REPO = 'podman/machine-os';

let registry: RegistryService;
let fake: FakeMachineOs;
let work: string;
const services: CacheService[] = [];

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'ici-pvm-e2e-'));
  registry = await startRegistry();
  fake = buildMachineOsLayout(join(work, 'layout'), { diskBytes: 256 * 1024 });
  await publishMachineOs(fake, registry.host, REPO, '5.3');
});

afterAll(async () => {
  await registry.stop();
  for (const s of services) await s.stop();
  rmSync(work, { recursive: true, force: true });
});

async function newCacheService(): Promise<CacheService> {
  const s = await CacheService.start();
  services.push(s);
  return s;
}

/** Blob GETs the registry served so far (its access log), by digest. */
function blobGets(): string[] {
  return [
    ...registry.log().matchAll(/"GET \/v2\/podman\/machine-os\/blobs\/(sha256:[0-9a-f]{64}) HTTP/g),
  ].map((m) => m[1]!);
}

interface Job {
  runnerTemp: string;
  home: string;
  workspace: string;
}

function job(name: string): Job {
  const j = {
    runnerTemp: join(work, name, 'temp'),
    home: join(work, name, 'home'),
    workspace: join(work, name, 'ws'),
  };
  for (const d of Object.values(j)) mkdirSync(d, { recursive: true });
  return j;
}

/** The action's one cache path under RUNNER_TEMP: the same on every run, so it stays after post. */
const CACHE_DIR = 'ici-pvm';

/** Runs main and post (unless skipped); after both, RUNNER_TEMP holds nothing the action made but CACHE_DIR. */
async function run(
  j: Job,
  cache: CacheService,
  inputs: Record<string, string> = {},
  skipPost = false,
  env: Record<string, string> = {},
): Promise<RunResult> {
  const r = await runAction({
    action: ACTION,
    inputs: { image: `docker://${registry.host}/${REPO}:5.3`, ...inputs },
    env: {
      ...cache.env({ runnerTemp: j.runnerTemp, workspace: j.workspace }),
      XDG_DATA_HOME: undefined,
      ...env,
    },
    runnerTemp: j.runnerTemp,
    home: j.home,
    workspace: j.workspace,
    skipPost,
    keepInRunnerTemp: [CACHE_DIR],
  });
  return r;
}

const stablePaths = (j: Job) => {
  const image = join(j.runnerTemp, 'ici-pvm', 'machine-os-qemu-x86_64.qcow2.zst');
  return { image, record: `${image}.json` };
};

function expectStepsOk(r: RunResult): void {
  expect({ main: r.main.exitCode, post: r.post?.exitCode ?? 0, errors: r.errors }).toEqual({
    main: 0,
    post: 0,
    errors: [],
  });
}

/**
 * Saves `paths` under `key` with the real @actions/cache, as another job would (used to plant a bad entry).
 * Asynchronous on purpose: the cache service runs in this process and must keep answering.
 */
async function saveWithActionsCache(
  cache: CacheService,
  j: Job,
  paths: string[],
  key: string,
): Promise<void> {
  const script =
    "import * as c from '@actions/cache'; const id = await c.saveCache(JSON.parse(process.argv[1]), process.argv[2]); if (id === -1) process.exit(3);";
  await execFileAsync(process.execPath, ['--input-type=module', '-e', script, JSON.stringify(paths), key], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...cache.env({ runnerTemp: j.runnerTemp, workspace: j.workspace }) },
    timeout: 60_000,
  });
}

describe('preseed-podman-vm with a registry and the Actions cache', () => {
  const qemu = () => fake.disk('x86_64', 'qemu');
  let serviceA: CacheService;
  let cold: Job;

  it('cold run: resolves the index, downloads exactly one blob, exports a containers.conf, post saves', async () => {
    serviceA = await newCacheService();
    cold = job('cold');
    const before = blobGets().length;
    const r = await run(cold, serviceA);
    expectStepsOk(r);

    const gets = blobGets().slice(before);
    expect(gets).toEqual([qemu().blobDigest]);
    const paths = stablePaths(cold);
    expect(r.outputs).toMatchObject({
      'image-path': paths.image,
      'image-digest': qemu().manifestDigest,
      'cache-hit': 'false',
      'containers-conf': join(cold.runnerTemp, 'ici-pvm', 'containers.conf'),
      'machine-name': '',
    });
    expect(readFileSync(paths.image).equals(readFileSync(qemu().blobPath))).toBe(true);
    expect(r.main.summary).toContain(
      `| ${qemu().manifestDigest} | ${formatBytes(qemu().blobSize)} | no | ${paths.image} |`,
    );
    expect(r.log).toMatch(/Downloading fedora-coreos-41\.20261101\.0-qemu\.x86_64\.qcow2\.zst: .* done in/);

    // podman 4.3 here: CONTAINERS_CONF (which replaces the whole conf) names a file with the image.
    const conf = r.exportedEnv.CONTAINERS_CONF!;
    expect(conf).toBe(r.outputs['containers-conf']);
    expect(readFileSync(conf, 'utf8')).toContain(`[machine]\nimage = "${paths.image}"`);

    // Podman 5's own cache name: the disk MANIFEST digest hex + .qcow2.zst.
    const podmanCache = join(
      cold.home,
      '.local/share/containers/podman/machine/qemu/cache',
      `${qemu().manifestDigest.slice(7)}.qcow2.zst`,
    );
    expect(readFileSync(podmanCache).equals(readFileSync(qemu().blobPath))).toBe(true);

    const entries = serviceA.list();
    expect(entries).toHaveLength(1);
    expect(entries[0]).toMatchObject({ finalized: true });
    expect(entries[0]!.key).toMatch(
      new RegExp(`^podman-machine-os-Linux-x86_64-[0-9a-f]{12}-${qemu().manifestDigest.slice(7)}$`),
    );
  });

  it('picks the disk for the requested provider: applehv disk for libkrun (prefetch for another arch)', async () => {
    const r = await run(job('libkrun'), await newCacheService(), {
      'vm-type': 'libkrun',
      arch: 'aarch64',
      'set-default': 'false',
    });
    expectStepsOk(r);
    expect(r.outputs['image-digest']).toBe(fake.disk('aarch64', 'applehv').manifestDigest);
    expect(r.outputs['image-path']).toMatch(/machine-os-applehv-aarch64\.raw\.zst$/);
    expect(r.exportedEnv.CONTAINERS_CONF).toBeUndefined();
  });

  // Before: set-default (on by default) exported a conf naming the other arch's disk, and every later
  // `podman machine init` on this host made a machine of it that cannot boot.
  it("a prefetch for another arch exports no containers.conf: podman here inits the host's arch only", async () => {
    const other = process.arch === 'arm64' ? 'x86_64' : 'aarch64';
    const j = job('other-arch');
    // Before: the other arch's disk was placed in podman's image cache (one per provider, not per arch) and the
    // host's disk an earlier step had placed there was pruned as outdated.
    const podmanCache = join(j.home, '.local/share/containers/podman/machine/qemu/cache');
    const hostDisk = `${fake.disk(other === 'aarch64' ? 'x86_64' : 'aarch64', 'qemu').manifestDigest.slice(7)}.qcow2.zst`;
    mkdirSync(podmanCache, { recursive: true });
    writeFileSync(join(podmanCache, hostDisk), 'the host disk');
    const r = await run(j, await newCacheService(), { arch: other });
    expectStepsOk(r);
    expect(readdirSync(podmanCache)).toEqual([hostDisk]);
    expect(r.outputs['image-digest']).toBe(fake.disk(other, 'qemu').manifestDigest);
    expect(r.outputs['containers-conf']).toBe('');
    expect(Object.keys(r.exportedEnv).filter((k) => k.startsWith('CONTAINERS_CONF'))).toEqual([]);
    expect(r.log).toContain(`Not exporting a containers.conf: the ${other} disk is a prefetch`);
  });

  it('detects a corrupted byte in a restored image, deletes it and downloads again', async () => {
    const serviceB = await newCacheService();
    const key = serviceA.list()[0]!.key;
    const paths = stablePaths(cold);
    const bytes = readFileSync(paths.image);
    bytes[bytes.length >> 1]! ^= 0xff;
    writeFileSync(paths.image, bytes);
    await saveWithActionsCache(serviceB, cold, [paths.image, paths.record], key);
    await laterRun([cold.runnerTemp, cold.home]);

    const before = blobGets().length;
    const r = await run(cold, serviceB);
    expectStepsOk(r);
    expect(r.warnings.join('\n')).toMatch(
      /cached image is unusable \(sha256 is sha256:[0-9a-f]{64}, expected/,
    );
    expect(blobGets().slice(before)).toEqual([qemu().blobDigest]);
    expect(r.outputs['cache-hit']).toBe('false');
    expect(readFileSync(paths.image).equals(readFileSync(qemu().blobPath))).toBe(true);
  });

  it('refuses a cache entry whose record vouches for other bytes than the registry names, and downloads', async () => {
    const serviceF = await newCacheService();
    const key = serviceA.list()[0]!.key;
    const paths = stablePaths(cold);
    const forged = Buffer.from('not the machine disk');
    const forgedDigest = `sha256:${createHash('sha256').update(forged).digest('hex')}`;
    writeFileSync(paths.image, forged);
    const record = JSON.parse(readFileSync(paths.record, 'utf8')) as Record<string, unknown>;
    writeFileSync(paths.record, JSON.stringify({ ...record, fileDigest: forgedDigest, size: forged.length }));
    await saveWithActionsCache(serviceF, cold, [paths.image, paths.record], key);
    await laterRun([cold.runnerTemp, cold.home]);

    const before = blobGets().length;
    const r = await run(cold, serviceF);
    expectStepsOk(r);
    expect(r.warnings.join('\n')).toMatch(
      new RegExp(`cached image is unusable \\(it is .* with file ${forgedDigest}, not`),
    );
    expect(blobGets().slice(before)).toEqual([qemu().blobDigest]);
    expect(r.outputs['cache-hit']).toBe('false');
    expect(readFileSync(paths.image).equals(readFileSync(qemu().blobPath))).toBe(true);
  });

  it('two concurrent posts saving the same key both succeed and leave one entry', async () => {
    const serviceC = await newCacheService();
    const shared = job('matrix');
    const main = await run(shared, serviceC, {}, true);
    expect(main.main.exitCode).toBe(0);
    const noop = join(work, 'noop-main.mjs');
    writeFileSync(noop, '');
    const post = () =>
      runAction({
        mainScript: noop,
        postScript: join(REPO_ROOT, 'dist', ACTION, 'post.js'),
        actionYml: join(REPO_ROOT, 'actions', ACTION, 'action.yml'),
        env: {
          ...serviceC.env({ runnerTemp: shared.runnerTemp, workspace: shared.workspace }),
          ...Object.fromEntries(Object.entries(main.main.state).map(([k, v]) => [`STATE_${k}`, v])),
        },
        runnerTemp: shared.runnerTemp,
        home: shared.home,
        workspace: shared.workspace,
        // One RUNNER_TEMP for both: checked once both posts are done (either may still be working at the other's end).
        keepInRunnerTemp: 'unchecked',
      });
    const [p1, p2] = await Promise.all([post(), post()]);
    for (const p of [p1, p2]) {
      expect(p.post?.exitCode).toBe(0);
      expect(p.warnings).toEqual([]);
      expect(runnerTempLeftovers(p, [CACHE_DIR])).toEqual([]);
    }
    const logs = [p1.log, p2.log].join('\n');
    expect(logs).toMatch(/Cache saved: podman-machine-os-/);
    expect(logs).toMatch(/Cache not saved, another job saved or is saving podman-machine-os-/);
    expect(serviceC.list().filter((e) => e.finalized)).toHaveLength(1);
  });

  it('a blob whose bytes do not match its digest fails the step, clearly, and keeps no file', async () => {
    // A relay in front of the real registry that flips one byte of every blob body on the way.
    const relay = createServer((req, res) => {
      const upstream = httpRequest(
        `${registry.url}${req.url}`,
        { method: req.method, headers: { ...req.headers, host: registry.host } },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          let flipped = !req.url?.includes('/blobs/');
          answer.on('data', (chunk: Buffer) => {
            if (!flipped && chunk.length > 0) {
              chunk[0]! ^= 0xff;
              flipped = true;
            }
            res.write(chunk);
          });
          answer.on('end', () => res.end());
        },
      );
      req.pipe(upstream);
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    const port = (relay.address() as AddressInfo).port;
    try {
      const j = job('tampered');
      const r = await run(j, await newCacheService(), { image: `docker://127.0.0.1:${port}/${REPO}:5.3` });
      expect(r.main.exitCode).toBe(1);
      expect(r.errors.join('\n')).toMatch(/download failed \(nothing was kept\).*sha256/);
      expect(readdirSync(join(j.runnerTemp, 'ici-pvm'))).toEqual([]);
      expect(r.post?.exitCode).toBe(0);
      expect(r.log).not.toMatch(/Saving cache/);
    } finally {
      relay.closeAllConnections();
      await new Promise<void>((r) => relay.close(() => r()));
    }
  });

  describe('registry stopped', () => {
    beforeAll(async () => {
      await registry.stop();
    });

    it('a later run (same paths, wiped) restores from the cache: same digest, file present, conf names it', async () => {
      // Another RUNNER_TEMP path is another cache version: nothing to restore, and no registry to pull from. That
      // run and the later one on cold's paths share nothing but the cache, which r0 finds nothing in: both wait
      // out the unreachable registry's retries at once.
      const [r0, r] = await Promise.all([
        run(job('elsewhere'), serviceA),
        laterRun([cold.runnerTemp, cold.home]).then(() => run(cold, serviceA)),
      ]);
      expect(r0.main.exitCode).toBe(1);
      expect(r0.errors.join('\n')).toMatch(/registry is unreachable .* and no cached image exists/);

      expectStepsOk(r);
      const paths = stablePaths(cold);
      expect(r.outputs).toMatchObject({
        'image-path': paths.image,
        'image-digest': qemu().manifestDigest,
        'cache-hit': 'true',
      });
      expect(readFileSync(paths.image).equals(readFileSync(qemu().blobPath))).toBe(true);
      expect(readFileSync(r.exportedEnv.CONTAINERS_CONF!, 'utf8')).toContain(`image = "${paths.image}"`);
      expect(r.warnings.join('\n')).toMatch(/unreachable/);
      expect(r.log).not.toMatch(/Saving cache/);
    });

    // Before: only a registry that could not be connected to counted as unreachable. One that answered 503 to
    // every try (an outage page in front of quay.io) failed the step, "cannot resolve docker://…: GET manifest
    // …: HTTP 503 …", though the cache held an image of that source (the stream path already fell back on 5xx).
    it('a registry answering 503 to every try is unreachable too: the cached image of that source is used', async () => {
      const asked: string[] = [];
      const outage = createServer((req, res) => {
        asked.push(`${req.method} ${req.url}`);
        res.writeHead(503, { 'retry-after': '0', 'content-type': 'text/html' }).end('<h1>down</h1>');
      });
      await new Promise<void>((r) => outage.listen(0, '127.0.0.1', r));
      try {
        const image = `docker://127.0.0.1:${(outage.address() as AddressInfo).port}/${REPO}:5.3`;
        const base = buildCacheKey({
          prefix: 'podman-machine-os',
          arch: 'x86_64',
          inputs: { image, disktype: 'qemu' },
        });
        // The previous test restored cold's image and record: the same paths serve any reference.
        const paths = stablePaths(cold);
        const cache = await newCacheService();
        await saveWithActionsCache(cache, cold, [paths.image, paths.record], `${base}-${'a'.repeat(64)}`);
        await laterRun([cold.runnerTemp, cold.home]);
        const r = await run(cold, cache, { image });
        expectStepsOk(r);
        expect(asked.length).toBeGreaterThan(1);
        expect(r.warnings.join('\n')).toMatch(/registry of .* is unreachable \(.*503/);
        expect(r.outputs).toMatchObject({ 'image-digest': qemu().manifestDigest, 'cache-hit': 'true' });
        expect(readFileSync(paths.image).equals(readFileSync(qemu().blobPath))).toBe(true);
      } finally {
        outage.closeAllConnections();
        await new Promise<void>((r) => outage.close(() => r()));
      }
    });

    it('with the registry down, a corrupted cached image fails clearly and is deleted', async () => {
      const serviceD = await newCacheService();
      const paths = stablePaths(cold);
      const bytes = readFileSync(paths.image);
      bytes[0]! ^= 0x01;
      writeFileSync(paths.image, bytes);
      await saveWithActionsCache(serviceD, cold, [paths.image, paths.record], `${serviceA.list()[0]!.key}`);
      await laterRun([cold.runnerTemp, cold.home]);
      const r = await run(cold, serviceD);
      expect(r.main.exitCode).toBe(1);
      expect(r.errors.join('\n')).toMatch(
        /cached image .* is unusable \(sha256 is .*expected .*\) and the registry is unreachable/,
      );
      expect(existsSync(paths.image)).toBe(false);
      expect(r.post?.exitCode).toBe(0);
    });
  });
});

describe('preseed-podman-vm with an http(s) URL (against a local node:http server)', () => {
  it('downloads once, caches by URL, and a later run restores it with the server gone', async () => {
    const disk = readFileSync(fake.disk('x86_64', 'qemu').blobPath);
    const requests: string[] = [];
    const server = createServer((req, res) => {
      requests.push(`${req.method} ${req.url}`);
      if (req.url !== '/images/fcos-qemu.x86_64.qcow2.zst') {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-length': disk.length }).end(disk);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/images/fcos-qemu.x86_64.qcow2.zst`;
    const cache = await newCacheService();
    const j = job('url');
    const digest = `sha256:${createHash('sha256').update(disk).digest('hex')}`;
    try {
      const r = await run(j, cache, { image: url });
      expectStepsOk(r);
      expect(requests).toEqual(['GET /images/fcos-qemu.x86_64.qcow2.zst']);
      expect(r.outputs).toMatchObject({ 'image-digest': digest, 'cache-hit': 'false' });
      expect(r.outputs['image-path']).toMatch(/ici-pvm\/url-[0-9a-f]{12}-fcos-qemu\.x86_64\.qcow2\.zst$/);
      expect(readFileSync(r.outputs['image-path']!).equals(disk)).toBe(true);
      expect(cache.list()).toHaveLength(1);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
    await laterRun([j.runnerTemp, j.home]);
    const later = await run(j, cache, { image: url });
    expectStepsOk(later);
    expect(later.outputs).toMatchObject({ 'image-digest': digest, 'cache-hit': 'true' });
    expect(readFileSync(later.outputs['image-path']!).equals(disk)).toBe(true);
    expect(requests).toHaveLength(1);
  });

  it('through a proxy: a URL with user:password@ (Basic, masked before the input is printed, not in the summary) serving a .raw.gz labelled Content-Encoding: gzip keeps the published bytes', async () => {
    const published = gzipSync(Buffer.alloc(256 * 1024, 5));
    const expected = `Basic ${Buffer.from('bob:s3cr@t!').toString('base64')}`;
    const server = createServer((req, res) => {
      if (req.headers.authorization !== expected) return void res.writeHead(401).end();
      res.writeHead(200, { 'content-encoding': 'gzip', 'content-length': published.length }).end(published);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const proxy = await startForwardProxy();
    const port = (server.address() as AddressInfo).port;
    try {
      const url = `http://bob:s3cr%40t!@disk.${PROXY_TEST_DOMAIN}:${port}/fcos-applehv.raw.gz`;
      const r = await run(job('url-auth-gz'), await newCacheService(), { image: url }, false, {
        HTTP_PROXY: proxy.url,
        NO_PROXY: '127.0.0.1',
      });
      expectStepsOk(r);
      expect(r.outputs['image-digest']).toBe(
        `sha256:${createHash('sha256').update(published).digest('hex')}`,
      );
      expect(readFileSync(r.outputs['image-path']!).equals(published)).toBe(true);
      expect(proxy.records.map((p) => p.target)).toContain(`disk.${PROXY_TEST_DOMAIN}:${port}`);
      // Both forms masked (the runner's `::add-mask::` data is %-escaped: the harness reads it unescaped) before
      // the first line that shows the URL.
      expect(r.masks).toEqual(expect.arrayContaining(['s3cr@t!', 's3cr%40t!']));
      expect(secretOnlyAfterMask(r.main, 's3cr@t!')).toBe(true);
      // The summary is a file beside the log: before, it named the input with its password (s3cr%40t!).
      expect(r.main.summary).not.toContain('s3cr');
      expect(r.main.summary).toContain(url.replace('bob:s3cr%40t!@', ''));
      const shown = r.main.lines.findIndex(
        (l) => l.text.includes('s3cr%40t!') && !l.text.startsWith('::add-mask::'),
      );
      const masked = r.main.lines.findIndex((l) => l.text === '::add-mask::s3cr%2540t!');
      expect(masked).toBeGreaterThanOrEqual(0);
      expect(masked).toBeLessThan(shown);
    } finally {
      await proxy.stop();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('a URL that answers 404 fails the step and keeps nothing', async () => {
    const server = createServer((_req, res) => res.writeHead(404).end());
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/missing.qcow2.zst`;
    try {
      const j = job('url404');
      const r = await run(j, await newCacheService(), { image: url });
      expect(r.main.exitCode).toBe(1);
      expect(r.errors.join('\n')).toMatch(/download failed \(nothing was kept\).*404/);
      expect(readdirSync(join(j.runnerTemp, 'ici-pvm')).filter((f) => f.startsWith('url-'))).toEqual([]);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('an endless body without Content-Length is stopped at IMAGE_CI_DOWNLOAD_MAX_SIZE, naming the URL; nothing is kept', async () => {
    let sent: Promise<number> | undefined;
    const server = createServer((_req, res) => void (sent = endlessBody(res)));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/endless.qcow2.zst`;
    try {
      const j = job('url-endless');
      const r = await run(j, await newCacheService(), { image: url }, false, LIMIT_1MIB);
      expect(r.main.exitCode).toBe(1);
      expect(r.errors.join('\n')).toContain(
        `download failed (nothing was kept): ${url} sent more than the download limit of 1.0 MiB (1048576 bytes) without announcing a size; download stopped.`,
      );
      // The connection was dropped at the limit, not read to its end.
      expect(await sent).toBeLessThan(16 * 1024 * 1024);
      expect(readdirSync(join(j.runnerTemp, 'ici-pvm'))).toEqual([]);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('an IMAGE_CI_DOWNLOAD_MAX_SIZE without a unit stops main with an input error before anything is fetched', async () => {
    const requests: string[] = [];
    const server = createServer((req, res) => {
      requests.push(`${req.method} ${req.url}`);
      res.writeHead(404).end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/disk.qcow2.zst`;
    try {
      const j = job('url-bad-limit');
      const r = await run(j, await newCacheService(), { image: url }, false, {
        IMAGE_CI_DOWNLOAD_MAX_SIZE: '20',
      });
      expect(r.main.exitCode).toBe(2);
      expect(r.errors.join('\n')).toContain(
        "Environment variable IMAGE_CI_DOWNLOAD_MAX_SIZE: '20' has no unit; write 20GiB, 20GB or 20MiB.",
      );
      expect(requests).toEqual([]);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('a size announced beyond the free space is refused before its first byte, naming both sizes', async () => {
    const announced = 10 ** 15;
    const server = createServer((_req, res) => {
      res.writeHead(200, { 'content-length': String(announced) });
      // A first MiB, then the connection is cut: a client that does not look at the size starts writing.
      res.write(Buffer.alloc(1024 * 1024));
      setTimeout(() => res.destroy(), 3000).unref();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/huge.qcow2.zst`;
    try {
      const j = job('url-huge');
      // The limit raised above the size, so that the free space is what refuses it.
      const r = await run(j, await newCacheService(), { image: url }, false, {
        IMAGE_CI_DOWNLOAD_MAX_SIZE: '2000TiB',
      });
      expect(r.main.exitCode).toBe(1);
      expect(r.errors.join('\n')).toMatch(
        new RegExp(
          `download failed \\(nothing was kept\\): ${url.replace(/[.]/g, '\\.')}: the download is 909\\.5 TiB \\(${announced} bytes\\) but \\S+ has only [\\d.]+ \\w+ \\(\\d+ bytes\\) free\\. Download refused before its first byte\\.`,
        ),
      );
      expect(readdirSync(join(j.runnerTemp, 'ici-pvm'))).toEqual([]);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});

/**
 * A body without Content-Length (chunked) that goes on far past the download limit the test sets, ended after
 * `upTo` bytes so that a download without a limit finishes (and the test fails) instead of hanging. Resolves
 * `sent` with what the server managed to write.
 */
function endlessBody(res: ServerResponse, upTo = 16 * 1024 * 1024): Promise<number> {
  res.writeHead(200, { 'content-type': 'application/octet-stream' });
  const chunk = Buffer.alloc(64 * 1024, 7);
  let sent = 0;
  return new Promise((resolve) => {
    const more = () => {
      while (sent < upTo && !res.destroyed) {
        sent += chunk.length;
        if (!res.write(chunk)) return void res.once('drain', more);
      }
      res.end();
    };
    res.on('close', () => resolve(sent));
    more();
  });
}

const LIMIT_1MIB = { IMAGE_CI_DOWNLOAD_MAX_SIZE: '1MiB' };

/**
 * A stand-in for builds.coreos.fedoraproject.org, which cannot be reached here: stream metadata in the published
 * shape (coreos/stream-metadata-go) and the disk it points at, both on a local node:http server.
 */
async function startFcosMock(
  disk: Buffer,
  publishedSha = createHash('sha256').update(disk).digest('hex'),
  serveDisk = (res: ServerResponse): void =>
    void res.writeHead(200, { 'content-length': disk.length }).end(disk),
  /** An Authorization header every request must carry (else 401). */
  requireAuthorization?: string,
) {
  const requests: string[] = [];
  const authorizations: Array<string | undefined> = [];
  const release = '41.20261101.2.0';
  const title = `fedora-coreos-${release}-qemu.x86_64.qcow2.xz`;
  const diskPath = `/prod/streams/testing/builds/${release}/x86_64/${title}`;
  const server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    authorizations.push(req.headers.authorization);
    if (requireAuthorization && req.headers.authorization !== requireAuthorization) {
      return void res.writeHead(401).end();
    }
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    // `/hop/<port><rest>` redirects to <rest> on that port of 127.0.0.1: another origin, or this one.
    const hop = /^\/hop\/(\d+)(\/.*)$/.exec(req.url ?? '');
    if (hop) return void res.writeHead(302, { location: `http://127.0.0.1:${hop[1]}${hop[2]}` }).end();
    if (req.url === '/streams/testing.json') {
      const qemu = {
        disk: { location: `${base}${diskPath}`, sha256: publishedSha, signature: `${base}${diskPath}.sig` },
      };
      const body = JSON.stringify({
        stream: 'testing',
        metadata: { 'last-modified': '2026-11-20T12:00:00Z' },
        architectures: {
          x86_64: { artifacts: { qemu: { release, formats: { 'qcow2.xz': qemu } } } },
        },
      });
      res.writeHead(200, { 'content-type': 'application/json' }).end(body);
    } else if (req.url === diskPath) {
      serveDisk(res);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    requests,
    authorizations,
    title,
    streamUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}/streams/testing.json`,
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe('preseed-podman-vm on podman 4: a Fedora CoreOS stream [mock of builds.coreos.fedoraproject.org]', () => {
  it('resolves the stream, verifies the published sha256, places it for podman 4, caches it; a later run restores it', async () => {
    const disk = readFileSync(fake.disk('x86_64', 'qemu').blobPath);
    const sha = createHash('sha256').update(disk).digest('hex');
    const mock = await startFcosMock(disk);
    const cache = await newCacheService();
    const j = job('fcos');
    try {
      const r = await run(j, cache, { image: mock.streamUrl });
      expectStepsOk(r);
      expect(mock.requests).toEqual([
        'GET /streams/testing.json',
        expect.stringMatching(/^GET \/prod\/.*\.qcow2\.xz$/),
      ]);
      const image = r.outputs['image-path']!;
      expect(image).toMatch(/ici-pvm\/fcos-testing-[0-9a-f]{12}-qemu-x86_64\.qcow2\.xz$/);
      expect(r.outputs).toMatchObject({ 'image-digest': `sha256:${sha}`, 'cache-hit': 'false' });
      expect(readFileSync(image).equals(disk)).toBe(true);
      // Podman 4 reuses <data dir>/qemu/cache/<file name> when its sha256 matches the stream.
      const podmanCache = join(j.home, '.local/share/containers/podman/machine/qemu/cache', mock.title);
      expect(readFileSync(podmanCache).equals(disk)).toBe(true);
      expect(readFileSync(r.exportedEnv.CONTAINERS_CONF!, 'utf8')).toContain(`image = "${image}"`);
      expect(cache.list()).toEqual([
        expect.objectContaining({ key: expect.stringMatching(new RegExp(`-${sha}$`)) }),
      ]);

      await laterRun([j.runnerTemp, j.home]);
      const later = await run(j, cache, { image: mock.streamUrl });
      expectStepsOk(later);
      expect(later.outputs).toMatchObject({ 'image-digest': `sha256:${sha}`, 'cache-hit': 'true' });
      expect(readFileSync(image).equals(disk)).toBe(true);
      expect(mock.requests.filter((q) => q.includes('.qcow2.xz'))).toHaveLength(1);
      expect(later.log).not.toMatch(/Streaming restore not used/);
    } finally {
      await mock.stop();
    }
  });

  // Before: the stream was fetched with the credentials in its URL, which fetch refuses ("Request cannot be
  // constructed from a URL that includes credentials"): the step called the stream unreachable and failed.
  it('a stream URL with user:password@ sends Basic auth to the stream and its same-origin disk; no credentials in the record, path, key or summary', async () => {
    const disk = readFileSync(fake.disk('x86_64', 'qemu').blobPath);
    const sha = createHash('sha256').update(disk).digest('hex');
    const expected = `Basic ${Buffer.from('bob:s3cr@t!').toString('base64')}`;
    const mock = await startFcosMock(disk, undefined, undefined, expected);
    const cache = await newCacheService();
    try {
      const r = await run(job('fcos-auth'), cache, {
        image: mock.streamUrl.replace('http://', 'http://bob:s3cr%40t!@'),
      });
      expectStepsOk(r);
      expect(mock.authorizations).toEqual([expected, expected]);
      const image = r.outputs['image-path']!;
      const record = JSON.parse(readFileSync(`${image}.json`, 'utf8')) as { source: string };
      expect(record.source).toBe(mock.streamUrl);
      // Path and key as for the URL without credentials: a short hash of a password can be guessed.
      const plainTag = createHash('sha256').update(mock.streamUrl).digest('hex').slice(0, 12);
      expect(image).toContain(`fcos-testing-${plainTag}-`);
      const base = buildCacheKey({
        prefix: 'podman-machine-os',
        arch: 'x86_64',
        inputs: { image: mock.streamUrl, disktype: 'qemu' },
      });
      expect(cache.list().map((e) => e.key)).toEqual([`${base}-${sha}`]);
      expect(secretOnlyAfterMask(r.main, 's3cr@t!')).toBe(true);
      // Before, the summary named the stream URL with its password.
      expect(r.main.summary).not.toContain('s3cr');
      expect(r.main.summary).toContain(mock.streamUrl);
    } finally {
      await mock.stop();
    }
  });

  // Before: `abc%2Fdef=;x` as written was masked in neither form (parsed `abc%2Fdef%3D%3Bx`, decoded
  // `abc/def=;x`), and the first line of the log printed it.
  it('a stream password the URL parser escapes further (%2F with = and ;) is masked as written before the input is printed', async () => {
    const disk = readFileSync(fake.disk('x86_64', 'qemu').blobPath);
    const expected = `Basic ${Buffer.from('bob:abc/def=;x').toString('base64')}`;
    const mock = await startFcosMock(disk, undefined, undefined, expected);
    try {
      const written = 'abc%2Fdef=;x';
      const r = await run(job('fcos-auth-written'), await newCacheService(), {
        image: mock.streamUrl.replace('http://', `http://bob:${written}@`),
      });
      expectStepsOk(r);
      expect(mock.authorizations).toEqual([expected, expected]);
      expect(r.masks).toContain(written);
      const masked = r.main.lines.findIndex((l) => l.text.startsWith('::add-mask::abc%252Fdef=;x'));
      const shown = r.main.lines.findIndex((l) => l.text.includes(written));
      expect(masked).toBeGreaterThanOrEqual(0);
      expect(shown).toBeGreaterThan(masked);
    } finally {
      await mock.stop();
    }
  });

  // Before: fetch dropped the Authorization at the hop to the other origin and did not send it again on the way
  // back, so the stream answered 401 and the step failed ("... answered HTTP 401").
  it('a stream URL with user:password@ that redirects through another origin and back sends Basic auth again on its own origin', async () => {
    const disk = readFileSync(fake.disk('x86_64', 'qemu').blobPath);
    const expected = `Basic ${Buffer.from('bob:s3cr@t!').toString('base64')}`;
    const own = await startFcosMock(disk, undefined, undefined, expected);
    const other = await startFcosMock(disk);
    try {
      const port = (u: string) => new URL(u).port;
      const streamUrl = own.streamUrl.replace(
        '/streams/',
        `/hop/${port(other.streamUrl)}/hop/${port(own.streamUrl)}/streams/`,
      );
      const r = await run(job('fcos-auth-hops'), await newCacheService(), {
        image: streamUrl.replace('http://', 'http://bob:s3cr%40t!@'),
      });
      expectStepsOk(r);
      expect(own.authorizations).toEqual([expected, expected, expected]);
      expect(other.authorizations).toEqual([undefined]);
    } finally {
      await own.stop();
      await other.stop();
    }
  });

  // Before: "cannot resolve http://bob:wrong@…: … answered HTTP 401" named the input with its password.
  it('a stream that refuses the credentials fails the step with a message that names the URL without them', async () => {
    const disk = readFileSync(fake.disk('x86_64', 'qemu').blobPath);
    const mock = await startFcosMock(disk, undefined, undefined, 'Basic other');
    try {
      const r = await run(job('fcos-auth-401'), await newCacheService(), {
        image: mock.streamUrl.replace('http://', 'http://bob:wr0ng-pw@'),
      });
      expect(r.main.errors).toEqual([
        `preseed-podman-vm failed: cannot resolve ${mock.streamUrl}: ${mock.streamUrl} answered HTTP 401`,
      ]);
    } finally {
      await mock.stop();
    }
  });

  /** A cold run of the FCOS source that caches its disk; returns the paths it cached and the entry's key. */
  async function coldFcos(j: Job, cache: CacheService, streamUrl: string) {
    const r = await run(j, cache, { image: streamUrl });
    expectStepsOk(r);
    const image = r.outputs['image-path']!;
    return { image, record: `${image}.json`, key: cache.list()[0]!.key };
  }

  const podmanCacheOf = (j: Job) => join(j.home, '.local/share/containers/podman/machine/qemu/cache');

  it('an entry whose image path is replaced by a later hard link member (other bytes) is read, refused and downloaded again', async () => {
    const disk = readFileSync(fake.disk('x86_64', 'qemu').blobPath);
    const mock = await startFcosMock(disk);
    const cache = await newCacheService();
    const j = job('fcos-relinked');
    try {
      const { image, record, key } = await coldFcos(j, cache, mock.streamUrl);
      // The real disk and its record (hashed on the way), then the disk's path again: a hard link to the record.
      const tarFile = join(work, 'fcos-relinked.tar');
      execFileSync('tar', ['--posix', '-P', '-cf', tarFile, image, record]);
      rmSync(image);
      linkSync(record, image);
      execFileSync('tar', ['--posix', '-P', '-rf', tarFile, record, image]);
      execFileSync('zstd', ['-q', '-f', '--long=30', tarFile, '-o', `${tarFile}.zst`]);
      cache.replaceArchive(key, `${tarFile}.zst`);
      await laterRun([j.runnerTemp, j.home]);

      const later = await run(j, cache, { image: mock.streamUrl });
      expectStepsOk(later);
      expect(later.log).not.toMatch(/sha256 verified/);
      expect(later.warnings.join('\n')).toMatch(
        /cached image is unusable \(sha256 is sha256:[0-9a-f]{64}, expected/,
      );
      expect(later.outputs['cache-hit']).toBe('false');
      expect(mock.requests.filter((q) => q.includes('.qcow2.xz'))).toHaveLength(2);
      expect(readFileSync(image).equals(disk)).toBe(true);
      expect(readFileSync(join(podmanCacheOf(j), mock.title)).equals(disk)).toBe(true);
    } finally {
      await mock.stop();
    }
  });

  // Before: the refused entry's paths were removed with a plain rm, which fails on a directory, so the step
  // failed ("Path is a directory: rm returned EISDIR (is a directory) …/ici-pvm/fcos-…qcow2.xz") instead of
  // downloading again; a recursive rm still failed for the runner user on a directory of mode 000 inside
  // ("EACCES: permission denied, scandir '…/ici-pvm/fcos-…qcow2.xz/locked'").
  it('an entry holding directories at the image and record paths is a miss for the runner user: removed and downloaded again', async () => {
    const disk = readFileSync(fake.disk('x86_64', 'qemu').blobPath);
    const sha = createHash('sha256').update(disk).digest('hex');
    const mock = await startFcosMock(disk);
    const cache = await newCacheService();
    const user = testUser();
    // The runner user's job dirs, below a work dir it can pass through.
    chmodSync(work, 0o755);
    const j = job('fcos-dirs');
    for (const d of Object.values(j)) chownSync(d, user.uid, user.gid);
    try {
      const tag = createHash('sha256').update(mock.streamUrl).digest('hex').slice(0, 12);
      const image = join(j.runnerTemp, CACHE_DIR, `fcos-testing-${tag}-qemu-x86_64.qcow2.xz`);
      const record = `${image}.json`;
      for (const dir of [image, record]) {
        mkdirSync(join(dir, 'locked'), { recursive: true });
        writeFileSync(join(dir, 'locked', 'inside'), 'x');
        chmodSync(join(dir, 'locked'), 0);
      }
      const base = buildCacheKey({
        prefix: 'podman-machine-os',
        arch: 'x86_64',
        inputs: { image: mock.streamUrl, disktype: 'qemu' },
      });
      await saveWithActionsCache(cache, j, [image, record], `${base}-${sha}`);
      await laterRun([j.runnerTemp, j.home]);
      // podman (asked for its version) keeps its runtime files there, not in TMPDIR.
      const runtime = join(work, 'fcos-dirs', 'run');
      mkdirSync(runtime, { mode: 0o700 });
      for (const d of [j.runnerTemp, j.home, runtime]) chownSync(d, user.uid, user.gid);

      // Main alone: the entry's key exists, so post would only find it saved.
      const r = await runAction({
        ...stepScripts(hostPodman(), ACTION, work, user),
        inputs: { image: mock.streamUrl },
        env: {
          ...cache.env({ runnerTemp: j.runnerTemp, workspace: j.workspace }),
          XDG_DATA_HOME: undefined,
          XDG_RUNTIME_DIR: runtime,
        },
        runnerTemp: j.runnerTemp,
        home: j.home,
        workspace: j.workspace,
        skipPost: true,
      });
      expect({ exitCode: r.main.exitCode, errors: r.errors }).toEqual({ exitCode: 0, errors: [] });
      expect(r.log).toMatch(/Cache restored: /);
      expect(r.warnings.join('\n')).toMatch(/cached image is unusable \(no readable record /);
      expect(r.outputs).toMatchObject({ 'cache-hit': 'false', 'image-path': image });
      expect(readFileSync(image).equals(disk)).toBe(true);
      expect(JSON.parse(readFileSync(record, 'utf8'))).toMatchObject({ title: mock.title });
    } finally {
      await mock.stop();
    }
  });

  it("a cached record whose disk title climbs out of podman's cache dir is refused: nothing outside is replaced", async () => {
    const disk = readFileSync(fake.disk('x86_64', 'qemu').blobPath);
    const mock = await startFcosMock(disk);
    const cold = await newCacheService();
    const j = job('fcos-title');
    try {
      const { image, record, key } = await coldFcos(j, cold, mock.streamUrl);
      const victim = join(j.home, 'victim.txt');
      const fields = JSON.parse(readFileSync(record, 'utf8')) as Record<string, unknown>;
      writeFileSync(record, JSON.stringify({ ...fields, title: relative(podmanCacheOf(j), victim) }));
      const poisoned = await newCacheService();
      await saveWithActionsCache(poisoned, j, [image, record], key);

      for (const online of [true, false]) {
        await laterRun([j.runnerTemp, j.home]);
        mkdirSync(dirname(victim), { recursive: true });
        writeFileSync(victim, 'precious');
        if (!online) await mock.stop();
        const later = await run(j, poisoned, { image: mock.streamUrl });
        expect(readFileSync(victim, 'utf8')).toBe('precious');
        expect(later.log).not.toMatch(/sha256 verified/);
        if (online) {
          expectStepsOk(later);
          expect(later.warnings.join('\n')).toMatch(
            /cached image is unusable \(its record names the disk "\.\.\/.*victim\.txt", which is no plain file name\)/,
          );
          expect(readFileSync(join(podmanCacheOf(j), mock.title)).equals(disk)).toBe(true);
        } else {
          expect(later.main.exitCode).toBe(1);
          expect(later.errors.join('\n')).toMatch(
            /its record names the disk "\.\.\/.*victim\.txt", which is no plain file name/,
          );
        }
      }
    } finally {
      await mock.stop();
    }
  });

  it('a disk sent without Content-Length is stopped at IMAGE_CI_DOWNLOAD_MAX_SIZE before its sha256 is checked', async () => {
    let sent: Promise<number> | undefined;
    const mock = await startFcosMock(Buffer.alloc(0), undefined, (res) => void (sent = endlessBody(res)));
    const j = job('fcos-endless');
    try {
      const r = await run(j, await newCacheService(), { image: mock.streamUrl }, false, LIMIT_1MIB);
      expect(r.main.exitCode).toBe(1);
      expect(r.errors.join('\n')).toMatch(
        /download failed \(nothing was kept\): http:\/\/127\.0\.0\.1:\d+\/prod\/streams\/testing\/builds\/.*\.qcow2\.xz sent more than the download limit of 1\.0 MiB \(1048576 bytes\)/,
      );
      expect(await sent).toBeLessThan(16 * 1024 * 1024);
      expect(readdirSync(join(j.runnerTemp, 'ici-pvm'))).toEqual([]);
    } finally {
      await mock.stop();
    }
  });

  it('a disk that does not match the published sha256 fails the step and keeps nothing', async () => {
    const disk = readFileSync(fake.disk('x86_64', 'qemu').blobPath);
    const mock = await startFcosMock(disk, 'f'.repeat(64));
    const j = job('fcos-bad');
    try {
      const r = await run(j, await newCacheService(), { image: mock.streamUrl });
      expect(r.main.exitCode).toBe(1);
      expect(r.errors.join('\n')).toMatch(
        /download failed \(nothing was kept\): fedora-coreos-.*\.qcow2\.xz has sha256:[0-9a-f]{64}, the stream publishes sha256:f{64}/,
      );
      expect(readdirSync(join(j.runnerTemp, 'ici-pvm'))).toEqual([]);
    } finally {
      await mock.stop();
    }
  });
});

describe('preseed-podman-vm with a local image file', () => {
  it('says in one line that there is nothing to cache, and touches no cache', async () => {
    const j = job('local-file');
    const cache = await newCacheService();
    const file = fake.disk('x86_64', 'qemu').blobPath;
    const r = await run(j, cache, { image: file });
    expectStepsOk(r);
    expect(r.log.split('\n').filter((l) => l.includes('nothing to cache'))).toEqual([
      `The image is a local file (${file}): there is nothing to cache for it.`,
    ]);
    expect(r.log).not.toMatch(/Restoring cache|Saving cache/);
    expect(cache.counters.requests).toEqual({});
  });
});
