/**
 * The streaming restore behind a company proxy: the cache service double hands out URLs under
 * `cache.proxytest`, a name only the test's forward proxy resolves, so a restore that lands went through it. The
 * lookup, the first range (node's client) and the ranges after it (the keep-alive range client) all go to the
 * proxy in absolute form, with the proxy's credentials. In process, like cache-stream.test.ts; the proxy
 * settings are read once per process, so this file sets them before its first restore.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import * as cache from '@actions/cache';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { restoreCache } from '../../src/core/cache.js';
import { CacheService, laterRun } from '../support/cache-service.js';
import { cacheEnv, captureStdout, cliHost, fillRandom, jobDirs, treeDigest } from '../support/cache-files.js';
import { startForwardProxy, type ForwardProxy } from '../support/forward-proxy.js';

const MiB = 1024 * 1024;
const PROXY_VARS = ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'NO_PROXY', 'no_proxy'];
const env = cacheEnv();
const savedProxyEnv = Object.fromEntries(PROXY_VARS.map((k) => [k, process.env[k]]));
let service: CacheService;
let proxy: ForwardProxy;
let dirs: ReturnType<typeof jobDirs>;

beforeAll(async () => {
  [service, proxy] = await Promise.all([
    CacheService.start(),
    startForwardProxy({ user: 'corp', password: 'proxy-secret-4711' }),
  ]);
  dirs = jobDirs('cache-stream-proxy');
  for (const k of PROXY_VARS) delete process.env[k];
});

afterAll(async () => {
  env.restore();
  for (const [k, v] of Object.entries(savedProxyEnv)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  await Promise.all([service.stop(), proxy.stop()]);
  rmSync(dirs.base, { recursive: true, force: true });
});

describe('streaming restore through an HTTP proxy (cache service double behind a real forward proxy)', () => {
  it('looks up and reads every range through the proxy, with its credentials: the stream is used, no fallback', async () => {
    const dir = join(dirs.runnerTemp, 'ici-proxied');
    await fillRandom(dir, 1, 9 * MiB);
    const digest = treeDigest(dir);
    // Saved by an earlier job that reached the service directly.
    env.use(service.env({ workspace: dirs.workspace, runnerTemp: dirs.runnerTemp }));
    const { value } = await captureStdout(() => cache.saveCache([dir], 'proxied-key'));
    expect(value).toBeGreaterThan(0);
    await laterRun([dirs.runnerTemp]);

    // This job sees the service only as cache.proxytest, through the proxy.
    service.reachAs('cache.proxytest');
    env.use(service.env({ workspace: dirs.workspace, runnerTemp: dirs.runnerTemp }));
    process.env.HTTP_PROXY = proxy.urlWithCredentials;
    const before = service.counters.rangedDownloads;
    const { host, log } = cliHost();
    const result = await restoreCache(host, [dir], 'proxied-key');
    expect(result.hit).toBe(true);
    expect(treeDigest(dir)).toBe(digest);
    expect(log.filter((l) => l.startsWith('Streaming restore not used'))).toEqual([]);

    const ranged = service.counters.rangedDownloads - before;
    expect(ranged).toBeGreaterThan(1);
    const rangeRecords = proxy.records.filter((r) => r.range !== undefined);
    expect(rangeRecords).toHaveLength(ranged);
    const lookups = proxy.records.filter((r) => r.path.endsWith('/GetCacheEntryDownloadURL'));
    expect(lookups).toHaveLength(1);
    for (const r of [...rangeRecords, ...lookups]) {
      expect(r).toMatchObject({
        target: `cache.proxytest:${service.port}`,
        proxyAuthorization: true,
        status: 0,
      });
    }
  });

  it('looks up and reads every range through the proxy over v1 (GHES) as well', async () => {
    // The entry the test above restored, asked for as a GHES runner would (still behind the proxy).
    const dir = join(dirs.runnerTemp, 'ici-proxied');
    const digest = treeDigest(dir);
    await laterRun([dirs.runnerTemp]);
    env.use(service.envV1({ workspace: dirs.workspace, runnerTemp: dirs.runnerTemp }));
    const [records, before] = [proxy.records.length, service.counters.rangedDownloads];
    const { host, log } = cliHost();
    expect((await restoreCache(host, [dir], 'proxied-key')).hit).toBe(true);
    expect(treeDigest(dir)).toBe(digest);
    expect(log.filter((l) => l.startsWith('Streaming restore not used'))).toEqual([]);
    const carried = proxy.records.slice(records);
    expect(carried.filter((r) => r.path.includes('/_apis/artifactcache/cache?'))).toHaveLength(1);
    expect(carried.filter((r) => r.range !== undefined)).toHaveLength(
      service.counters.rangedDownloads - before,
    );
    for (const r of carried) {
      expect(r).toMatchObject({
        target: `cache.proxytest:${service.port}`,
        proxyAuthorization: true,
        status: 0,
      });
    }
  });
});
