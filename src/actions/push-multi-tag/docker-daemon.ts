/**
 * A `docker-daemon:<ref>` source: the image is read once from the Docker engine's export API
 * (`GET /images/get?names=<ref>`, what `docker save` uses) and streamed into an OCI layout (docker-save.ts),
 * without `docker push` and without a temporary archive.
 *
 * Why not skopeo's docker-daemon transport: skopeo before 1.14.2 pins Docker API 1.22, which Docker ≥ 25 refuses
 * ("client version 1.22 is too old"), and later ones ask for versions Docker 29 refuses too; GitHub's Ubuntu
 * runners ship skopeo 1.13 beside Docker 28. It also copies the whole export into a temporary file before
 * reading it. Unversioned API paths are answered at the engine's own current version, so this works with every
 * engine, old or new.
 *
 * The engine is where docker looks for it: DOCKER_HOST (`unix://`, or `tcp://` with DOCKER_TLS_VERIFY /
 * DOCKER_TLS and the certificates in DOCKER_CERT_PATH, default ~/.docker), else /var/run/docker.sock.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Agent } from 'undici';
import { readOciLayout, type LocalImage } from '../../core/oci/layout.js';
import { externalText, ERROR_BODY_LIMIT } from '../../core/oci/response.js';
import { openImageSource, type Compression } from '../../core/oci/source.js';
import { ActionError, errorMessage } from '../../core/run.js';
import { dockerSaveToLayout } from './docker-save.js';

const DEFAULT_DOCKER_HOST = 'unix:///var/run/docker.sock';
/** The engine may prepare the whole export before its first byte (classic `docker save` does). */
const HEADERS_TIMEOUT_MS = 30 * 60_000;
/** Once bytes flow, a pause this long means the engine stopped. */
const BODY_TIMEOUT_MS = 5 * 60_000;

export interface DockerEngine {
  /** DOCKER_HOST as given (or the default), for messages. */
  address: string;
  origin: string;
  dispatcher: Agent;
}

export function dockerEngine(env: NodeJS.ProcessEnv = process.env): DockerEngine {
  const address = env.DOCKER_HOST || DEFAULT_DOCKER_HOST;
  const timeouts = { headersTimeout: HEADERS_TIMEOUT_MS, bodyTimeout: BODY_TIMEOUT_MS };
  if (address.startsWith('unix://')) {
    const socketPath = address.slice('unix://'.length);
    return {
      address,
      origin: 'http://docker',
      dispatcher: new Agent({ ...timeouts, connect: { socketPath } }),
    };
  }
  if (address.startsWith('tcp://')) {
    const hostPort = address.slice('tcp://'.length).replace(/\/+$/, '');
    const verify = Boolean(env.DOCKER_TLS_VERIFY);
    if (!verify && !env.DOCKER_TLS) {
      return { address, origin: `http://${hostPort}`, dispatcher: new Agent(timeouts) };
    }
    const certs = env.DOCKER_CERT_PATH || join(env.HOME || homedir(), '.docker');
    const read = (name: string) => {
      try {
        return readFileSync(join(certs, name), 'utf8');
      } catch (error) {
        throw new ActionError(
          `docker-daemon: DOCKER_HOST ${address} uses TLS, but ${join(certs, name)} cannot be read: ${errorMessage(error)}`,
        );
      }
    };
    const connect = verify
      ? { ca: read('ca.pem'), cert: read('cert.pem'), key: read('key.pem'), rejectUnauthorized: true }
      : { rejectUnauthorized: false };
    return { address, origin: `https://${hostPort}`, dispatcher: new Agent({ ...timeouts, connect }) };
  }
  const scheme = /^[a-z]+:\/\//i.exec(address)?.[0] ?? address;
  throw new ActionError(
    `docker-daemon: DOCKER_HOST ${externalText(scheme, 40)}… is not supported (only unix:// and tcp://); for ssh, forward the engine's socket (ssh -L) and point DOCKER_HOST at the local end.`,
  );
}

export interface DockerDaemonOptions {
  scratch: string;
  compression?: Compression;
  timeoutMs: number;
  log: (line: string) => void;
  debug?: (line: string) => void;
  env?: NodeJS.ProcessEnv;
}

/** Exports `ref` from the engine into an OCI layout under `scratch` and reads the image from it. */
export async function readDockerDaemonImage(ref: string, options: DockerDaemonOptions): Promise<LocalImage> {
  const engine = dockerEngine(options.env);
  const subject = `docker-daemon:${ref}`;
  const layoutDir = join(options.scratch, 'layout');
  const compression = options.compression ?? 'gzip';
  options.log(`Exporting ${ref} from the Docker engine at ${engine.address}`);
  try {
    const response = await engine.dispatcher
      .request({
        origin: engine.origin,
        path: `/images/get?${new URLSearchParams({ names: ref }).toString()}`,
        method: 'GET',
        signal: AbortSignal.timeout(options.timeoutMs),
      })
      .catch((error: unknown) => {
        throw new ActionError(`cannot read the source ${subject}: ${unreachable(error, engine.address)}`);
      });
    if (response.statusCode !== 200) {
      const body = await response.body.text().catch(() => '');
      throw new ActionError(
        `cannot read the source ${subject}: ${engineRefusal(response.statusCode, body.slice(0, ERROR_BODY_LIMIT), ref)}`,
      );
    }
    try {
      await dockerSaveToLayout(response.body, {
        layoutDir,
        compress: compression === 'gzip' ? 'gzip' : 'none',
        what: subject,
      });
    } catch (error) {
      if (error instanceof ActionError) throw error;
      throw new ActionError(`cannot read the source ${subject}: ${externalText(errorMessage(error), 300)}`, {
        cause: error,
      });
    }
  } finally {
    await engine.dispatcher.close();
  }
  if (compression === 'gzip') return readOciLayout(layoutDir, 'image');
  // zstd is left to skopeo, as for every other source (Node.js has no zstd before 22.15).
  return openImageSource(
    { transport: 'oci', location: layoutDir, ref: 'image' },
    { ...options, compression, tlsVerify: true },
  );
}

function unreachable(error: unknown, address: string): string {
  const code = (error as { code?: unknown }).code ?? (error as { cause?: { code?: unknown } }).cause?.code;
  if (code === 'ENOENT' || code === 'ECONNREFUSED') {
    return `no Docker engine answers at ${address}; start it, or set DOCKER_HOST to where it listens.`;
  }
  if (code === 'EACCES') {
    return `permission denied on ${address}; run as a user in the docker group (or as root).`;
  }
  return `the Docker engine at ${address} cannot be reached: ${externalText(errorMessage(error), 160)}.`;
}

function engineRefusal(status: number, body: string, ref: string): string {
  let said = body;
  try {
    const parsed = JSON.parse(body) as { message?: unknown };
    if (typeof parsed.message === 'string') said = parsed.message;
  } catch {
    // not the engine's JSON error: keep the text
  }
  const detail = externalText(said, 200);
  if (status === 404)
    return `the Docker engine has no image ${ref} (${detail || 'HTTP 404'}); build or pull it first.`;
  return `the Docker engine answered HTTP ${status}${detail ? `: ${detail}` : ''}.`;
}
