/**
 * push-multi-tag behind a company proxy (HTTPS_PROXY/HTTP_PROXY/NO_PROXY, as skopeo and podman honour them):
 * a real docker-registry with token auth over https, reachable only as `registry.proxytest:<port>`, a name
 * only the test's forward proxy resolves, so a push that lands used the proxy. The registry's CA is in the
 * user's certs.d, for the TLS session inside the CONNECT tunnel; the token realm is plain http under the same
 * name, so token fetches go through the proxy in absolute form.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { lookup } from 'node:dns/promises';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { startForwardProxy, type ForwardProxy } from '../support/forward-proxy.js';
import { runAction, secretOnlyAfterMask } from '../support/harness.js';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { startRegistry, type RegistryService } from '../support/registry.js';

const PROXY_USER = 'corp-user';
const PROXY_PASSWORD = `proxy-pw-${Math.random().toString(36).slice(2, 12)}`;
const NAME = 'registry.proxytest';

describe('push-multi-tag through an HTTP proxy (real registry behind a real forward proxy)', () => {
  let work: string;
  let layout: GeneratedLayout;
  let registry: RegistryService;
  /** Plain http, reached by this machine's own name (not a loopback literal, so NO_PROXY decides). */
  let direct: RegistryService;
  let proxy: ForwardProxy;
  let xdgConfig: string;
  let port: string;
  let localName: string;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'ici-proxy-'));
    layout = generateLayout(join(work, 'layout'), { layers: [40_000] });
    [registry, direct, proxy] = await Promise.all([
      startRegistry({ auth: 'token', tls: 'server', proxiedName: NAME }),
      startRegistry({ auth: 'htpasswd' }),
      startForwardProxy({ user: PROXY_USER, password: PROXY_PASSWORD }),
    ]);
    port = registry.host.split(':')[1]!;
    localName = hostname();
    // The machine's name resolves to this machine (the test's registries listen on 127.0.0.1).
    expect((await lookup(localName, 4)).address).toMatch(/^127\./);
    xdgConfig = join(work, 'config');
    const certDir = join(xdgConfig, 'containers', 'certs.d', `${NAME}:${port}`);
    mkdirSync(certDir, { recursive: true });
    copyFileSync(registry.ca!.caCert, join(certDir, 'ca.crt'));
  });

  afterAll(async () => {
    await Promise.all([registry?.stop(), direct?.stop(), proxy?.stop()]);
    rmSync(work, { recursive: true, force: true });
  });

  const push = (inputs: Record<string, string>, env: Record<string, string | undefined>) =>
    runAction({
      action: 'push-multi-tag',
      inputs: { source: layout.transportRef, tags: 'v1', ...inputs },
      env: {
        XDG_CONFIG_HOME: xdgConfig,
        HTTPS_PROXY: undefined,
        https_proxy: undefined,
        HTTP_PROXY: undefined,
        http_proxy: undefined,
        NO_PROXY: undefined,
        no_proxy: undefined,
        ...env,
      },
    });

  it('pushes through an authenticating proxy: CONNECT for the registry, absolute form for the token realm, password masked', async () => {
    proxy.records.length = 0;
    const r = await push(
      {
        repositories: `${NAME}:${port}/team/app`,
        username: registry.username!,
        password: registry.password!,
      },
      { HTTPS_PROXY: proxy.urlWithCredentials, http_proxy: proxy.urlWithCredentials },
    );
    expect(r.errors).toEqual([]);
    expect(r.main.exitCode).toBe(0);
    expect(r.outputs.digest).toBe(layout.digest);
    expect(registry.tokenRequests.length).toBeGreaterThan(0);
    const tunnels = proxy.records.filter((x) => x.method === 'CONNECT');
    expect(tunnels.length).toBeGreaterThan(0);
    expect(
      tunnels.every((x) => x.target === `${NAME}:${port}` && x.status === 200 && x.proxyAuthorization),
    ).toBe(true);
    const tokenFetches = proxy.records.filter((x) => x.method === 'GET' && x.path.startsWith('/token'));
    expect(tokenFetches.length).toBeGreaterThan(0);
    expect(tokenFetches.every((x) => x.target.startsWith(`${NAME}:`) && x.proxyAuthorization)).toBe(true);
    // The proxy password is a secret: masked before anything could show it, never in the log otherwise.
    expect(r.masks).toContain(PROXY_PASSWORD);
    expect(secretOnlyAfterMask(r.main, PROXY_PASSWORD)).toBe(true);
    expect(r.log.replaceAll(`::add-mask::${PROXY_PASSWORD}`, '')).not.toContain(PROXY_PASSWORD);
  });

  it('an insecure plain-http registry behind the proxy: the https try through a tunnel, then absolute-form http', async () => {
    proxy.records.length = 0;
    const target = `${NAME}:${direct.host.split(':')[1]}`;
    const r = await push(
      {
        repositories: `${target}/team/app`,
        username: direct.username!,
        password: direct.password!,
        'insecure-registries': target,
      },
      { HTTPS_PROXY: proxy.urlWithCredentials, HTTP_PROXY: proxy.urlWithCredentials },
    );
    expect(r.errors).toEqual([]);
    expect(r.outputs.digest).toBe(layout.digest);
    // The https probe met a plain-http answer inside its tunnel; everything after went as plain http requests.
    expect(proxy.records.filter((x) => x.method === 'CONNECT').length).toBeGreaterThan(0);
    const plain = proxy.records.filter((x) => x.method !== 'CONNECT');
    expect(plain.some((x) => x.method === 'PUT' && x.path.includes('/manifests/'))).toBe(true);
    expect(plain.every((x) => x.target === target && x.proxyAuthorization)).toBe(true);
  });

  it('NO_PROXY naming the registry: a direct connection, the proxy carries nothing', async () => {
    proxy.records.length = 0;
    const target = `${localName}:${direct.host.split(':')[1]}`;
    const r = await push(
      {
        repositories: `${target}/team/app`,
        username: direct.username!,
        password: direct.password!,
        'insecure-registries': target,
      },
      {
        HTTPS_PROXY: proxy.urlWithCredentials,
        HTTP_PROXY: proxy.urlWithCredentials,
        no_proxy: `other.example,${localName}`,
      },
    );
    expect(r.errors).toEqual([]);
    expect(r.outputs.digest).toBe(layout.digest);
    expect(proxy.records).toEqual([]);
  });

  it('a proxy that wants credentials (407): one clear error naming the proxy and the status, not retried', async () => {
    proxy.records.length = 0;
    const r = await push(
      {
        repositories: `${NAME}:${port}/team/app`,
        username: registry.username!,
        password: registry.password!,
      },
      { HTTPS_PROXY: proxy.url },
    );
    expect(r.main.exitCode).toBe(1);
    const text = r.errors.join('\n');
    expect(text).toContain(`proxy ${proxy.url} refused CONNECT ${NAME}:${port}: HTTP 407`);
    expect(text).toContain('HTTPS_PROXY');
    expect(text).not.toContain('fetch failed');
    expect(proxy.records.length).toBeGreaterThan(0);
    // Fewer than one request retried would make alone (six tries): each lookup asked once.
    expect(proxy.records.length).toBeLessThan(6);
    expect(proxy.records.every((x) => x.status === 407)).toBe(true);
  });
});
