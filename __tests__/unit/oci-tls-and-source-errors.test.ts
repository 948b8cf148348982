/**
 * certs.d directories as containers/image reads them (real files, a CA made with openssl), what TLS failures
 * mean for the user, and the one-line summary of a failed source export (skopeo's real error texts).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExecError } from '../../src/core/exec.js';
import { childFailure, remoteSourceFlags } from '../../src/actions/push-multi-tag/source.js';
import {
  certDirCandidates,
  findRegistryTls,
  loadCertDir,
  tlsConnectOptions,
  tlsFailure,
} from '../../src/core/oci/tls.js';
import { makeTestCa, type TestCa } from '../support/test-ca.js';

let work: string;
let ca: TestCa;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'ici-tls-'));
  mkdirSync(join(work, 'ca'));
  ca = makeTestCa(join(work, 'ca'));
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

const certDir = (files: Record<string, string>) => {
  const dir = mkdtempSync(join(work, 'certs-'));
  for (const [name, from] of Object.entries(files)) copyFileSync(from, join(dir, name));
  return dir;
};

describe('certs.d', () => {
  it('is looked for in the user config, then /etc/containers, then /etc/docker', () => {
    expect(certDirCandidates('r.example:5000', { XDG_CONFIG_HOME: '/cfg' })).toEqual([
      '/cfg/containers/certs.d/r.example:5000',
      '/etc/containers/certs.d/r.example:5000',
      '/etc/docker/certs.d/r.example:5000',
    ]);
    expect(certDirCandidates('r.example', { HOME: '/home/u' })[0]).toBe(
      '/home/u/.config/containers/certs.d/r.example',
    );
  });

  it('the first existing directory is used: *.crt are CAs, a *.cert with its *.key the client certificate', async () => {
    const config = join(work, 'config');
    const dir = join(config, 'containers', 'certs.d', '127.0.0.1:1');
    mkdirSync(dir, { recursive: true });
    for (const [name, from] of Object.entries({
      'ca.crt': ca.caCert,
      'client.cert': ca.clientCert,
      'client.key': ca.clientKey,
    })) {
      copyFileSync(from, join(dir, name));
    }
    const tls = await findRegistryTls('127.0.0.1:1', { XDG_CONFIG_HOME: config });
    expect(tls).toEqual({
      certDir: dir,
      ca: [readFileSync(ca.caCert, 'utf8')],
      clientCert: {
        cert: readFileSync(ca.clientCert, 'utf8'),
        key: readFileSync(ca.clientKey, 'utf8'),
        certFile: join(dir, 'client.cert'),
      },
    });
    expect(await findRegistryTls('127.0.0.1:2', { XDG_CONFIG_HOME: config })).toBeUndefined();
    // A CA replaces Node's default trust unless the defaults are passed too: they are.
    const options = tlsConnectOptions(tls, true, {});
    expect((options.ca as string[]).at(-1)).toBe(readFileSync(ca.caCert, 'utf8'));
    expect((options.ca as string[]).length).toBeGreaterThan(100);
    expect(tlsConnectOptions(undefined, false, {})).toEqual({ rejectUnauthorized: false });
  });

  it('a certificate without its key, or a key without its certificate, is refused as podman refuses it', async () => {
    await expect(loadCertDir(certDir({ 'client.cert': ca.clientCert }))).rejects.toThrow(
      /client\.cert has no key client\.key beside it \(CA certificates must end in \.crt\)/,
    );
    await expect(loadCertDir(certDir({ 'client.key': ca.clientKey }))).rejects.toThrow(
      /client\.key has no client certificate client\.cert/,
    );
  });
});

describe('certs.d mistakes are named', () => {
  it('a directory named ca.crt, or a link to nothing, is reported with its path and what it is', async () => {
    const withDir = certDir({});
    mkdirSync(join(withDir, 'ca.crt'));
    await expect(loadCertDir(withDir)).rejects.toThrow(
      `${withDir}/ca.crt is a directory; a certs.d directory holds certificate files.`,
    );
    const withLink = certDir({});
    symlinkSync(join(work, 'nonexistent'), join(withLink, 'ca.crt'));
    await expect(loadCertDir(withLink)).rejects.toThrow(
      `${withLink}/ca.crt is a link to a file that does not exist.`,
    );
  });
});

describe('TLS failures in words', () => {
  const failure = (code: string) => Object.assign(new Error(`boom ${code}`), { code });
  it.each([
    [
      'DEPTH_ZERO_SELF_SIGNED_CERT',
      /is not accepted \(boom .*\): put its CA certificate in \/etc\/containers\/certs\.d\/r:1\/ca\.crt .* add r:1 to insecure-registries/,
    ],
    ['CERT_HAS_EXPIRED', /is not accepted .*: renew it, or add r:1 to insecure-registries/],
    [
      'ERR_SSL_WRONG_VERSION_NUMBER',
      /r:1 answered plain http, not https: add r:1 to insecure-registries \(or set tls-verify: false\)\./,
    ],
    [
      'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE',
      /the TLS handshake with r:1 failed \(boom .*\): if it requires a TLS client certificate, put .*client\.cert and client\.key in \/etc\/containers\/certs\.d\/r:1\/ .*; otherwise it shares no TLS version or cipher/,
    ],
    [
      'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED',
      /r:1 requires a TLS client certificate .*client\.cert and client\.key in \/etc\/containers\/certs\.d\/r:1\//,
    ],
  ])('%s', (code, message) => {
    expect(tlsFailure(failure(code), 'HEAD blob', 'r:1', undefined)?.message).toMatch(message);
  });
  it('names the certs.d directory whose CAs did not vouch, and the client certificate refused; leaves other errors alone', () => {
    const material = {
      certDir: '/etc/docker/certs.d/r:1',
      ca: ['x'],
      clientCert: { cert: '', key: '', certFile: '/c/client.cert' },
    };
    expect(tlsFailure(failure('SELF_SIGNED_CERT_IN_CHAIN'), 'x', 'r:1', material)?.message).toContain(
      'the CA certificates in /etc/docker/certs.d/r:1 do not vouch for it',
    );
    expect(
      tlsFailure(failure('ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE'), 'x', 'r:1', material)?.message,
    ).toContain('it refused the client certificate /c/client.cert');
    expect(tlsFailure(failure('ECONNREFUSED'), 'x', 'r:1', material)).toBeUndefined();
  });
});

describe('a failed source export in one line', () => {
  const failed = (stderr: string, message = 'skopeo copy exited with 1') =>
    new ExecError(message, { exitCode: 1, stdout: '', stderr, durationMs: 1 });
  const fatal = (msg: string) =>
    `time="2026-12-01T11:00:00Z" level=fatal msg="${msg.replace(/"/g, '\\"')}"\n`;
  const docker = { transport: 'docker', location: '127.0.0.1:5000/a/b:1' } as const;

  it.each([
    [
      'initializing source docker://127.0.0.1:5000/a/b:1: pinging container registry 127.0.0.1:5000: Get "https://127.0.0.1:5000/v2/": http: server gave HTTP response to HTTPS client',
      'the registry answered plain http; add 127.0.0.1:5000 to insecure-registries (or set tls-verify: false) (skopeo: initializing source',
    ],
    [
      'initializing source docker://127.0.0.1:5000/a/b:1: pinging container registry 127.0.0.1:5000: Get "https://127.0.0.1:5000/v2/": x509: certificate signed by unknown authority',
      'the TLS certificate of 127.0.0.1:5000 is not trusted; put its CA in /etc/containers/certs.d/127.0.0.1:5000/ca.crt',
    ],
    [
      'initializing source docker://127.0.0.1:5000/a/b:1: reading manifest 1 in 127.0.0.1:5000/a/b: unauthorized: authentication required',
      '127.0.0.1:5000 refused access; log in to it before this step, or give username and password',
    ],
    [
      'initializing source docker://127.0.0.1:5000/a/b:1: reading manifest 1 in 127.0.0.1:5000/a/b: manifest unknown: manifest unknown',
      'no such image there',
    ],
  ])('%s', (msg, meaning) => {
    const line = childFailure('skopeo', failed(fatal(msg)), docker);
    expect(line).toContain(`cannot read the source docker://127.0.0.1:5000/a/b:1: ${meaning}`);
    expect(line.split('\n')).toHaveLength(1);
  });

  it('local sources, unknown failures and timeouts', () => {
    expect(
      childFailure(
        'skopeo',
        failed(
          fatal(
            'initializing source containers-storage:localhost/nope:1: reference "[vfs@/x+/y]localhost/nope:1" does not resolve to an image ID',
          ),
        ),
        { transport: 'containers-storage', location: 'localhost/nope:1' },
      ),
    ).toMatch(
      /^cannot read the source containers-storage:localhost\/nope:1: no such image in the container storage \(skopeo: initializing/,
    );
    expect(
      childFailure(
        'tar',
        failed('tar: This does not look like a tar archive\ntar: Exiting with failure status\n'),
        {
          transport: 'oci-archive',
          location: '/x.tar',
        },
      ),
    ).toBe(
      'cannot read the source oci-archive:/x.tar: the file is not a complete image archive (tar: This does not look like a tar archive)',
    );
    expect(childFailure('skopeo', failed(fatal('something new')), docker)).toBe(
      'cannot read the source docker://127.0.0.1:5000/a/b:1: skopeo: something new',
    );
    expect(childFailure('skopeo', failed('', 'skopeo copy timed out after 1800000 ms'), docker)).toContain(
      '127.0.0.1:5000 did not answer in time',
    );
  });

  // podman 5.4.2 (rootless, cgroups v1 here) printed exactly this for `podman save` of a storage whose image list
  // is no JSON: before, the line quoted the first warning and cut the error off.
  it("podman 5's cgroups-v1 warnings are passed over for its Error line", () => {
    const warning =
      'time="2026-12-02T15:51:43Z" level=warning msg="Using cgroups-v1 which is deprecated in favor of cgroups-v2 with Podman v5 and will be removed in a future version. Set environment variable `PODMAN_IGNORE_CGROUPSV1_WARNING` to hide this warning."\n';
    const error =
      'Error: configure storage: loading "/s/overlay-images/images.json": []*storage.Image: storage.Image.ID: ReadString: expects " or n, but found b, error found in #9 byte of ...|[{"id": broken\n|..., bigger context ...|[{"id": broken\n|...\n';
    const line = childFailure('podman', failed(warning + warning + error), {
      transport: 'containers-storage',
      location: 'app:build',
    });
    expect(line).toMatch(
      /^cannot read the source containers-storage:app:build: podman: configure storage: loading "\/s\/overlay-images\/images.json"/,
    );
    expect(line).not.toContain('cgroups-v1');
  });

  it('skopeo flags carry trust and the private auth file, never a secret', () => {
    expect(
      remoteSourceFlags({ tlsVerify: false, certDir: '/etc/containers/certs.d/r', authFile: '/t/auth.json' }),
    ).toEqual([
      '--src-tls-verify=false',
      '--src-cert-dir',
      '/etc/containers/certs.d/r',
      '--src-authfile',
      '/t/auth.json',
    ]);
    expect(remoteSourceFlags({ tlsVerify: true, anonymous: true })).toEqual([
      '--src-tls-verify=true',
      '--src-no-creds',
    ]);
  });
});
