/**
 * A certificate authority made by the test with openssl (EC P-256, one day): a server certificate for 127.0.0.1
 * and a client certificate, both signed by it, as PEM files in a directory of the test's own.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface TestCa {
  dir: string;
  /** The CA certificate (what a client trusts). */
  caCert: string;
  serverCert: string;
  serverKey: string;
  /** A client certificate signed by the CA (for registries that require one). */
  clientCert: string;
  clientKey: string;
}

/** A new unencrypted P-256 key: quick to make, and every TLS stack here takes it. */
const NEW_EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 });
}

function issue(
  dir: string,
  name: string,
  subject: string,
  extensions: string,
  ca: { cert: string; key: string },
): void {
  const key = join(dir, `${name}.key`);
  const csr = join(dir, `${name}.csr`);
  const ext = join(dir, `${name}.ext`);
  writeFileSync(ext, extensions);
  openssl(['req', '-new', ...NEW_EC_KEY, '-keyout', key, '-out', csr, '-subj', subject]);
  openssl([
    'x509',
    '-req',
    '-in',
    csr,
    '-CA',
    ca.cert,
    '-CAkey',
    ca.key,
    '-set_serial',
    `0x${randomBytes(8).toString('hex')}`,
    '-days',
    '1',
    '-out',
    join(dir, `${name}.crt`),
    '-extfile',
    ext,
  ]);
}

/**
 * Makes the CA and its two certificates in `dir` (which must exist). `dnsNames`: names the server certificate is
 * valid for besides 127.0.0.1 (a registry reached by a name only a test proxy resolves).
 */
export function makeTestCa(dir: string, label = 'ici-test', dnsNames: readonly string[] = []): TestCa {
  const ca = { cert: join(dir, 'ca.crt'), key: join(dir, 'ca.key') };
  openssl([
    'req',
    '-x509',
    ...NEW_EC_KEY,
    '-keyout',
    ca.key,
    '-out',
    ca.cert,
    '-days',
    '1',
    '-subj',
    `/CN=${label} CA`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  const altNames = ['IP:127.0.0.1', ...dnsNames.map((n) => `DNS:${n}`)].join(',');
  issue(dir, 'server', '/CN=127.0.0.1', `subjectAltName=${altNames}\nextendedKeyUsage=serverAuth\n`, ca);
  issue(dir, 'client', `/CN=${label} client`, 'extendedKeyUsage=clientAuth\n', ca);
  return {
    dir,
    caCert: ca.cert,
    serverCert: join(dir, 'server.crt'),
    serverKey: join(dir, 'server.key'),
    clientCert: join(dir, 'client.crt'),
    clientKey: join(dir, 'client.key'),
  };
}
