/**
 * A registry's TLS trust the way podman and skopeo find it (containers/image `dockerCertDir` and
 * `tlsclientconfig.SetupCertificates`): the first existing `<root>/<host[:port]>/` directory of the user's
 * `containers/certs.d`, `/etc/containers/certs.d` and `/etc/docker/certs.d`; in it `*.crt` are CAs trusted on top
 * of the default store, and a `*.cert` with the `*.key` of the same name is the client certificate (mTLS).
 * Also: what a TLS failure means for the user, in one sentence with the fix.
 */
import { readFileSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';
import { RegistryError } from './errors.js';

export interface RegistryTls {
  /** The certs.d directory this came from (for the log, and for skopeo's `--cert-dir`). */
  certDir: string;
  /** PEM CA certificates trusted for this registry besides the default store. */
  ca: string[];
  /** A client certificate and its key (PEM), with the file they came from. */
  clientCert?: { cert: string; key: string; certFile: string };
}

/** Where certs.d directories for `host` are looked for, in order; the first that exists is used alone. */
export function certDirCandidates(host: string, env: NodeJS.ProcessEnv = process.env): string[] {
  const configHome = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config');
  return [
    join(configHome, 'containers', 'certs.d', host),
    join('/etc/containers/certs.d', host),
    join('/etc/docker/certs.d', host),
  ];
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

/**
 * The TLS material for `host` (host[:port] as in an image reference), or undefined when no certs.d directory
 * exists for it. A `.cert` without its `.key` (or the reverse) is a mistake podman refuses too; so do we.
 */
export async function findRegistryTls(
  host: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<RegistryTls | undefined> {
  for (const dir of certDirCandidates(host, env)) {
    if (await isDirectory(dir)) return loadCertDir(dir);
  }
  return undefined;
}

export async function loadCertDir(dir: string): Promise<RegistryTls> {
  const names = (await readdir(dir)).sort();
  const result: RegistryTls = { certDir: dir, ca: [] };
  for (const name of names) {
    if (name.endsWith('.crt')) {
      result.ca.push(await readPem(join(dir, name)));
    } else if (name.endsWith('.cert')) {
      const keyName = `${name.slice(0, -'.cert'.length)}.key`;
      if (!names.includes(keyName)) {
        throw new Error(
          `${join(dir, name)} has no key ${keyName} beside it (CA certificates must end in .crt).`,
        );
      }
      result.clientCert ??= {
        cert: await readPem(join(dir, name)),
        key: await readPem(join(dir, keyName)),
        certFile: join(dir, name),
      };
    } else if (name.endsWith('.key')) {
      const certName = `${name.slice(0, -'.key'.length)}.cert`;
      if (!names.includes(certName)) {
        throw new Error(`${join(dir, name)} has no client certificate ${certName} beside it.`);
      }
    }
  }
  return result;
}

/** A certificate or key file, with a failure that names the file and what is wrong with it. */
async function readPem(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EISDIR')
      throw new Error(`${path} is a directory; a certs.d directory holds certificate files.`);
    if (code === 'ENOENT') throw new Error(`${path} is a link to a file that does not exist.`);
    throw new Error(`${path} cannot be read: ${(error as Error).message}`);
  }
}

/**
 * The default trust Node.js uses (bundled roots plus NODE_EXTRA_CA_CERTS), needed because a `ca` option replaces
 * it instead of adding to it. Node ≥ 22.15 says it directly; older versions get the same list rebuilt.
 */
function defaultCaCertificates(env: NodeJS.ProcessEnv): string[] {
  const withDefaults = tls as { getCACertificates?: (type: 'default') => string[] };
  if (withDefaults.getCACertificates) return withDefaults.getCACertificates('default');
  let extra = '';
  try {
    if (env.NODE_EXTRA_CA_CERTS) extra = readFileSync(env.NODE_EXTRA_CA_CERTS, 'utf8');
  } catch {
    // Node.js itself only warns about an unreadable NODE_EXTRA_CA_CERTS
  }
  return extra ? [...tls.rootCertificates, extra] : [...tls.rootCertificates];
}

/** Connection options for undici's connector: trust, client certificate, and whether to verify at all. */
export function tlsConnectOptions(
  material: RegistryTls | undefined,
  verify: boolean,
  env: NodeJS.ProcessEnv = process.env,
): tls.ConnectionOptions {
  const options: tls.ConnectionOptions = { rejectUnauthorized: verify };
  if (material && material.ca.length > 0) {
    options.ca = [...defaultCaCertificates(env), ...material.ca];
  }
  if (material?.clientCert) {
    options.cert = material.clientCert.cert;
    options.key = material.clientCert.key;
  }
  return options;
}

const UNTRUSTED_CERTIFICATE = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
  'CERT_SIGNATURE_FAILURE',
]);
const INVALID_CERTIFICATE = new Set([
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);
const PLAIN_HTTP = new Set([
  'ERR_SSL_WRONG_VERSION_NUMBER',
  'ERR_SSL_PACKET_LENGTH_TOO_LONG',
  'ERR_SSL_HTTP_REQUEST',
]);
/** What OpenSSL reports when the server asked for a client certificate and refused what it got (or nothing). */
const CLIENT_CERT_REFUSED = new Set([
  'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED',
  'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE',
  'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA',
  'ERR_SSL_TLSV1_ALERT_ACCESS_DENIED',
]);

/**
 * TLS 1.2's way of refusing a missing client certificate (OpenSSL-based servers: HAProxy, stunnel, node), and
 * also of finding no TLS version or cipher in common: never fixed by another try.
 */
const HANDSHAKE_FAILURE = new Set(['ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE']);

function tlsErrorCode(error: unknown): string | undefined {
  for (let e = error as { code?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 4; depth++) {
    if (typeof e.code === 'string') return e.code;
    e = e.cause as typeof e;
  }
  return undefined;
}

/** True when the error is the TLS verdict of a server that speaks TLS (an alert, a certificate refused). */
export function isTlsAlert(error: unknown): boolean {
  const code = tlsErrorCode(error);
  return (
    code !== undefined &&
    (CLIENT_CERT_REFUSED.has(code) || UNTRUSTED_CERTIFICATE.has(code) || INVALID_CERTIFICATE.has(code))
  );
}

/** True when a TLS handshake was answered in plain http (the one sign that a registry speaks only http). */
export function isPlainHttpAnswer(error: unknown): boolean {
  const code = tlsErrorCode(error);
  return code !== undefined && PLAIN_HTTP.has(code);
}

/**
 * The TLS failure in words, with what to do about it; undefined when `error` is not about TLS. These never fix
 * themselves, so they are not retried.
 */
export function tlsFailure(
  error: unknown,
  what: string,
  registry: string,
  material: RegistryTls | undefined,
): RegistryError | undefined {
  const code = tlsErrorCode(error);
  if (!code) return undefined;
  const detail = (error instanceof Error ? error.message : String(error)).replace(/\s+/g, ' ').trim();
  const dirs = certDirCandidates(registry);
  if (UNTRUSTED_CERTIFICATE.has(code) || INVALID_CERTIFICATE.has(code)) {
    const trust = material?.ca.length
      ? `the CA certificates in ${material.certDir} do not vouch for it`
      : `put its CA certificate in ${dirs[1]}/ca.crt (or ${dirs[0]}, or NODE_EXTRA_CA_CERTS)`;
    const fix = UNTRUSTED_CERTIFICATE.has(code) ? `${trust}, or` : 'renew it, or';
    return new RegistryError(
      `${what}: the TLS certificate of ${registry} is not accepted (${detail}): ${fix} add ${registry} to insecure-registries to skip verification.`,
    );
  }
  if (PLAIN_HTTP.has(code)) {
    return new RegistryError(
      `${what}: ${registry} answered plain http, not https: add ${registry} to insecure-registries (or set tls-verify: false).`,
    );
  }
  if (CLIENT_CERT_REFUSED.has(code)) {
    const sent = material?.clientCert
      ? `it refused the client certificate ${material.clientCert.certFile}`
      : `put the certificate and key as client.cert and client.key in ${dirs[1]}/ (or ${dirs[0]})`;
    return new RegistryError(`${what}: ${registry} requires a TLS client certificate (${detail}): ${sent}.`);
  }
  if (HANDSHAKE_FAILURE.has(code)) {
    const cert = material?.clientCert
      ? `it may have refused the client certificate ${material.clientCert.certFile}`
      : `if it requires a TLS client certificate, put the certificate and key as client.cert and client.key in ${dirs[1]}/ (or ${dirs[0]})`;
    return new RegistryError(
      `${what}: the TLS handshake with ${registry} failed (${detail}): ${cert}; otherwise it shares no TLS version or cipher with this client.`,
    );
  }
  return undefined;
}
