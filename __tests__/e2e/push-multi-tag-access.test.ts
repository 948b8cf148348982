/**
 * push-multi-tag reaches registries the way podman, skopeo and docker users already do: credentials from a real
 * `podman login`, a docker-credential helper and a docker identity token; TLS from certs.d directories (a CA
 * made by the test, a client certificate), `insecure-registries` as https without verification or plain http;
 * and one-line errors that say what to do. Real docker-registry over https, real podman and skopeo.
 *
 * The action runs with HOME, XDG_RUNTIME_DIR and XDG_CONFIG_HOME set to private dirs of this test; certificates for
 * the system-wide location go to /etc/containers/certs.d/127.0.0.1:<port> (port-unique; removed afterwards).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runAction, secretOnlyAfterMask } from '../support/harness.js';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { startRegistry, type RegistryService } from '../support/registry.js';

const SYSTEM_CERTS_D = '/etc/containers/certs.d';
const IDENTITY_TOKEN = `idtok-${createHash('sha256').update(String(Math.random())).digest('hex').slice(0, 24)}`;

function run(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  input?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { encoding: 'utf8', timeout: 120_000, env }, (error, stdout, stderr) =>
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
    child.stdin?.end(input ?? '');
  });
}

/** Every file under `dir` with a hash of its content: "nothing is written to the user's files". */
function snapshot(dir: string): Record<string, string> {
  const result: Record<string, string> = {};
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const path = join(d, name);
      if (statSync(path).isDirectory()) walk(path);
      else result[path] = createHash('sha256').update(readFileSync(path)).digest('hex');
    }
  };
  if (existsSync(dir)) walk(dir);
  return result;
}

describe('push-multi-tag: credentials and TLS as podman, skopeo and docker find them (real registries)', () => {
  let work: string;
  let layout: GeneratedLayout;
  /** htpasswd over plain http; `podman login` (default location: $XDG_RUNTIME_DIR/containers/auth.json). */
  let plain: RegistryService;
  /** htpasswd over https with the test's CA in /etc/containers/certs.d; a credential helper. */
  let privateCa: RegistryService;
  /** token auth over https requiring a client certificate ($XDG_CONFIG_HOME/containers/certs.d); an identity token in ~/.docker/config.json. */
  let mtls: RegistryService;
  let home: string;
  let xdgRuntime: string;
  let xdgConfig: string;
  let bin: string;
  let helperLog: string;
  let userEnv: Record<string, string | undefined>;
  const createdCertDirs: string[] = [];
  let createdSystemCertsD = false;

  const certsD = (root: string, registry: RegistryService, files: Record<string, string>) => {
    const dir = join(root, registry.host);
    mkdirSync(dir, { recursive: true });
    for (const [name, from] of Object.entries(files)) copyFileSync(from, join(dir, name));
    return dir;
  };

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'ici-access-'));
    layout = generateLayout(join(work, 'layout'), { layers: [200_000, 100_000] });
    [plain, privateCa, mtls] = await Promise.all([
      startRegistry({ auth: 'htpasswd' }),
      startRegistry({ auth: 'htpasswd', tls: 'server' }),
      startRegistry({ auth: 'token', tls: 'client-cert', identityTokens: [IDENTITY_TOKEN] }),
    ]);
    home = join(work, 'home');
    xdgRuntime = join(work, 'run');
    xdgConfig = join(home, '.config');
    bin = join(work, 'bin');
    helperLog = join(work, 'helper.log');
    for (const d of [home, xdgRuntime, bin]) mkdirSync(d, { recursive: true, mode: 0o700 });
    userEnv = {
      HOME: home,
      XDG_RUNTIME_DIR: xdgRuntime,
      XDG_CONFIG_HOME: xdgConfig,
      DOCKER_CONFIG: undefined,
      REGISTRY_AUTH_FILE: undefined,
      PATH: `${bin}:${process.env.PATH}`,
    };

    // The private-CA registry's CA where podman and skopeo look system-wide.
    createdSystemCertsD = !existsSync(SYSTEM_CERTS_D);
    createdCertDirs.push(certsD(SYSTEM_CERTS_D, privateCa, { 'ca.crt': privateCa.ca!.caCert }));
    // The client-certificate registry's CA and client certificate in the user's own certs.d.
    certsD(join(xdgConfig, 'containers', 'certs.d'), mtls, {
      'ca.crt': mtls.ca!.caCert,
      'client.cert': mtls.ca!.clientCert,
      'client.key': mtls.ca!.clientKey,
    });

    // A real `podman login` to the plain registry, into podman's default location.
    const storageConf = join(work, 'storage.conf');
    writeFileSync(
      storageConf,
      `[storage]\ndriver = "vfs"\ngraphroot = "${join(work, 'graph')}"\nrunroot = "${join(work, 'graph-run')}"\n`,
    );
    const login = await run(
      'podman',
      ['login', '--tls-verify=false', '--username', plain.username!, '--password-stdin', plain.host],
      { ...process.env, ...definedOnly(userEnv), CONTAINERS_STORAGE_CONF: storageConf },
      plain.password!,
    );
    expect(login.stderr).toBe('');
    expect(existsSync(join(xdgRuntime, 'containers', 'auth.json'))).toBe(true);

    // A credential helper on PATH, named for the private-CA registry in the user's containers auth.json.
    writeFileSync(
      join(bin, 'docker-credential-icitest'),
      `#!/bin/sh\nserver=$(cat)\necho "$1 $server" >> '${helperLog}'\n` +
        `if [ "$server" = '${privateCa.host}' ]; then\n` +
        `  printf '{"ServerURL":"%s","Username":"%s","Secret":"%s"}' "$server" '${privateCa.username}' '${privateCa.password}'\n` +
        `else\n  echo 'credentials not found in native keychain'; exit 1\nfi\n`,
    );
    chmodSync(join(bin, 'docker-credential-icitest'), 0o755);
    mkdirSync(join(xdgConfig, 'containers'), { recursive: true });
    writeFileSync(
      join(xdgConfig, 'containers', 'auth.json'),
      JSON.stringify({ auths: {}, credHelpers: { [privateCa.host]: 'icitest' } }),
    );

    // docker login's config, with an identity token for the token registry (as `docker login` keeps one).
    mkdirSync(join(home, '.docker'));
    writeFileSync(
      join(home, '.docker', 'config.json'),
      JSON.stringify({
        auths: {
          [mtls.host]: {
            auth: Buffer.from(`${mtls.username}:`).toString('base64'),
            identitytoken: IDENTITY_TOKEN,
          },
        },
      }),
    );
  });

  afterAll(async () => {
    await Promise.all([plain?.stop(), privateCa?.stop(), mtls?.stop()]);
    for (const d of createdCertDirs) rmSync(d, { recursive: true, force: true });
    if (createdSystemCertsD) {
      try {
        rmdirSync(SYSTEM_CERTS_D);
      } catch {
        // another test put its own directory there meanwhile
      }
    }
    rmSync(work, { recursive: true, force: true });
  });

  const push = (inputs: Record<string, string>, env: Record<string, string | undefined> = {}) =>
    runAction({
      action: 'push-multi-tag',
      inputs: { source: layout.transportRef, tags: 'v1, latest', ...inputs },
      env: { ...userEnv, ...env },
    });

  /** What skopeo sees at a ref, with the registry's own CA, client certificate and credentials. */
  async function remoteDigest(registry: RegistryService, ref: string): Promise<string> {
    const args = ['inspect', '--no-tags', '--creds', `${registry.username}:${registry.password}`];
    if (registry.ca) {
      const certDir = mkdtempSync(join(work, 'certs-'));
      copyFileSync(registry.ca.caCert, join(certDir, 'ca.crt'));
      copyFileSync(registry.ca.clientCert, join(certDir, 'client.cert'));
      copyFileSync(registry.ca.clientKey, join(certDir, 'client.key'));
      args.push('--cert-dir', certDir);
    } else {
      args.push('--tls-verify=false');
    }
    const out = await run('skopeo', [...args, `docker://${registry.host}/${ref}`], process.env);
    if (out.code !== 0) throw new Error(`skopeo inspect ${ref}: ${out.stderr}`);
    return (JSON.parse(out.stdout) as { Digest: string }).Digest;
  }

  it('"login steps, then push": three registries, three credential sources, three kinds of TLS, no credential inputs', async () => {
    const userFiles = () => ({ ...snapshot(home), ...snapshot(xdgRuntime) });
    const before = userFiles();
    const r = await push({
      repositories: [plain, privateCa, mtls].map((reg) => `${reg.host}/team/app`).join('\n'),
      'insecure-registries': plain.host,
    });
    expect(r.errors).toEqual([]);
    expect(r.main.exitCode).toBe(0);
    // The identity token was exchanged as an OAuth2 refresh token; no password ever went to that token server.
    expect(mtls.tokenRequests.length).toBeGreaterThan(0);
    expect(mtls.tokenRequests.filter((t) => t.grant !== 'refresh_token' || t.user !== mtls.username)).toEqual(
      [],
    );
    for (const reg of [plain, privateCa, mtls]) {
      expect(await remoteDigest(reg, 'team/app:latest')).toBe(layout.digest);
    }
    // Where each credential came from, named per registry; never the secret.
    expect(r.log).toContain(
      `${plain.host}: credentials (user 'tester') from ${xdgRuntime}/containers/auth.json (entry ${plain.host}).`,
    );
    expect(r.log).toContain(
      `${privateCa.host}: credentials (user 'tester') from docker-credential-icitest (credHelpers in ${xdgConfig}/containers/auth.json).`,
    );
    expect(r.log).toContain(
      `${mtls.host}: credentials (an identity token) from ${home}/.docker/config.json (entry ${mtls.host}).`,
    );
    expect(r.log).toContain(
      `${privateCa.host}: TLS from ${SYSTEM_CERTS_D}/${privateCa.host} (1 CA certificate(s)).`,
    );
    expect(r.log).toContain(
      `${mtls.host}: TLS from ${xdgConfig}/containers/certs.d/${mtls.host} (1 CA certificate(s), client certificate ${xdgConfig}/containers/certs.d/${mtls.host}/client.cert).`,
    );
    for (const secret of [plain.password!, privateCa.password!, IDENTITY_TOKEN]) {
      expect(secretOnlyAfterMask(r.main, secret)).toBe(true);
    }
    expect(r.masks).toEqual(expect.arrayContaining([plain.password, privateCa.password, IDENTITY_TOKEN]));
    expect(readFileSync(helperLog, 'utf8')).toContain(`get ${privateCa.host}`);
    // Nothing written to the user's files, nothing left behind.
    expect(userFiles()).toEqual(before);
  });

  it('a docker:// source on a private-CA registry: same lookup and trust, skopeo gets a private auth file and the cert dir', async () => {
    const seeded = await push({ repositories: `${privateCa.host}/src/app` });
    expect(seeded.main.exitCode).toBe(0);
    const r = await push({
      source: `docker://${privateCa.host}/src/app:v1`,
      repositories: `${plain.host}/copied/app`,
      'insecure-registries': plain.host,
    });
    expect(r.errors).toEqual([]);
    expect(r.outputs.digest).toBe(layout.digest);
    expect(r.log).toContain(
      `${privateCa.host} (source): credentials (user 'tester') from docker-credential-icitest (credHelpers in ${xdgConfig}/containers/auth.json).`,
    );
    expect(await remoteDigest(plain, 'copied/app:v1')).toBe(layout.digest);
    // The private auth file existed for skopeo only, and is gone.
    const authDir = r.main.state['ici-auth-dir'];
    expect(authDir).toBeTruthy();
    expect(existsSync(authDir!)).toBe(false);
    expect(secretOnlyAfterMask(r.main, privateCa.password!)).toBe(true);
  });

  describe('errors a user can act on', () => {
    it('an https registry whose CA is not trusted: one message naming certs.d and insecure-registries, no retries; tls-verify: false pushes over https unverified; NODE_EXTRA_CA_CERTS trusts it', async () => {
      const stranger = await startRegistry({ tls: 'server' });
      try {
        const refused = await push({ repositories: `${stranger.host}/a/b` });
        expect(refused.main.exitCode).toBe(1);
        const error = refused.errors.join('\n');
        expect(error).toContain(`the TLS certificate of ${stranger.host} is not accepted`);
        expect(error).toContain(`${SYSTEM_CERTS_D}/${stranger.host}/ca.crt`);
        expect(error).toContain(`add ${stranger.host} to insecure-registries`);
        expect(refused.log).toMatch(new RegExp(`${stranger.host}: \\d+ requests, 0 retried`));

        // tls-verify: false used to send plain http to this https registry (answered "HTTP 400 Bad Request").
        const pushed = await push({ repositories: `${stranger.host}/a/b`, 'tls-verify': 'false' });
        expect(pushed.errors).toEqual([]);
        expect(pushed.log).toContain(`${stranger.host}: TLS is not verified`);
        expect(stranger.log()).toMatch(/"PUT \/v2\/a\/b\/manifests\/latest HTTP\/[\d.]+" 201/);

        // NODE_EXTRA_CA_CERTS still works, also beside a certs.d CA for another registry in the same push.
        const trusted = await push(
          { repositories: `${stranger.host}/c/d, ${privateCa.host}/c/d` },
          { NODE_EXTRA_CA_CERTS: stranger.ca!.caCert },
        );
        expect(trusted.errors).toEqual([]);
        expect(trusted.log).not.toContain(`${stranger.host}: TLS is not verified`);
      } finally {
        await stranger.stop();
      }
    });

    it('a registry requiring a client certificate, without one: says so and where to put it', async () => {
      const config = join(work, 'ca-only');
      certsD(join(config, 'containers', 'certs.d'), mtls, { 'ca.crt': mtls.ca!.caCert });
      const r = await push({ repositories: `${mtls.host}/a/b` }, { XDG_CONFIG_HOME: config });
      expect(r.main.exitCode).toBe(1);
      expect(r.errors.join('\n')).toContain(`${mtls.host} requires a TLS client certificate (`);
      expect(r.errors.join('\n')).toContain(`client.cert and client.key in ${SYSTEM_CERTS_D}/${mtls.host}/`);
    });

    it('a plain-http registry with TLS verified: says to add it to insecure-registries', async () => {
      const r = await push({ repositories: `${plain.host}/a/b` });
      expect(r.main.exitCode).toBe(1);
      expect(r.errors.join('\n')).toContain(
        `${plain.host} answered plain http, not https: add ${plain.host} to insecure-registries (or set tls-verify: false).`,
      );
    });

    it('a docker:// source on a plain-http registry: one line with the meaning, printed once', async () => {
      const r = await push({
        source: `docker://${plain.host}/team/app:v1`,
        repositories: `${privateCa.host}/x/y`,
      });
      expect(r.main.exitCode).toBe(1);
      const expected = `cannot read the source docker://${plain.host}/team/app:v1: the registry answered plain http; add ${plain.host} to insecure-registries (or set tls-verify: false) (skopeo: `;
      expect(r.errors).toHaveLength(1);
      expect(r.errors[0]).toContain(expected);
      expect(r.errors[0]!.split('\n')).toHaveLength(1);
      // skopeo's own text appears once: in that line, not also streamed into the log (only into the debug log,
      // which the runner shows when step debugging is on).
      const shown = r.main.lines.filter((l) => !l.text.startsWith('::debug::'));
      expect(shown.filter((l) => l.text.includes('server gave HTTP response to HTTPS client'))).toHaveLength(
        1,
      );
    });

    it('a credential helper that fails is named; one that is missing means anonymous, said in the log', async () => {
      const config = join(work, 'helpers');
      mkdirSync(join(config, 'containers'), { recursive: true });
      writeFileSync(join(bin, 'docker-credential-broken'), '#!/bin/sh\necho "keychain locked" >&2\nexit 3\n');
      chmodSync(join(bin, 'docker-credential-broken'), 0o755);
      writeFileSync(
        join(config, 'containers', 'auth.json'),
        JSON.stringify({ credHelpers: { [privateCa.host]: 'broken', [plain.host]: 'not-installed' } }),
      );
      const broken = await push({ repositories: `${privateCa.host}/a/b` }, { XDG_CONFIG_HOME: config });
      expect(broken.main.exitCode).toBe(1);
      expect(broken.errors.join('\n')).toContain(
        `docker-credential-broken get ${privateCa.host} failed (exit 3): keychain locked.`,
      );
      // A helper that is not installed means "look further"; here nothing else holds a credential.
      const anonymous = await push(
        { repositories: `${plain.host}/a/b`, 'insecure-registries': plain.host },
        { XDG_CONFIG_HOME: config, XDG_RUNTIME_DIR: join(work, 'empty-run') },
      );
      expect(anonymous.log).toContain(
        `${plain.host}: docker-credential-not-installed (credHelpers in ${config}/containers/auth.json) is not on PATH; looking further.`,
      );
      expect(anonymous.log).toContain(`${plain.host}: no credentials found (searched `);
      expect(anonymous.errors.join('\n')).toContain(
        `${plain.host} requires a login and no credentials were found for it`,
      );
    });
  });
});

function definedOnly(env: Record<string, string | undefined>): Record<string, string> {
  return Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined));
}
