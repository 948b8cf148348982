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
 * The engine is where the docker CLI looks for it: DOCKER_HOST (`unix://`, or `tcp://` with DOCKER_TLS_VERIFY /
 * DOCKER_TLS and the certificates in DOCKER_CERT_PATH, default ~/.docker); else the docker context named by
 * DOCKER_CONTEXT or `currentContext` in $DOCKER_CONFIG/config.json (what docker/setup-docker-action, colima and
 * rootless docker set up); else /var/run/docker.sock.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Agent } from 'undici';
import { readOciLayout, type LocalImage } from '../../core/oci/layout.js';
import { externalText, ERROR_BODY_LIMIT, readPrefix } from '../../core/oci/response.js';
import { openImageSource, type Compression } from './source.js';
import { ActionError, errorMessage } from '../../core/run.js';
import { dockerSaveToLayout } from './docker-save.js';
import { formatDuration } from '../../core/summary.js';

const DEFAULT_DOCKER_HOST = 'unix:///var/run/docker.sock';
/** The engine may prepare the whole export before its first byte (classic `docker save` does). */
const HEADERS_TIMEOUT_MS = 30 * 60_000;
/** Once bytes flow, a pause this long means the engine stopped. */
const BODY_TIMEOUT_MS = 5 * 60_000;
/** Which image a name is, the engine answers from its metadata at once. */
const INSPECT_TIMEOUT_MS = 60_000;
/** An image's inspect answer (its config, tags and digests) is kilobytes; more is no such answer. */
const INSPECT_LIMIT = 4 * 1024 * 1024;
const IMAGE_ID = /^sha256:[0-9a-f]{64}$/;

export interface DockerEngine {
  /** Where the engine is, and what said so, for messages. */
  address: string;
  origin: string;
  dispatcher: Agent;
}

interface EngineEndpoint {
  host: string;
  /** Why this engine: `DOCKER_HOST`, `docker context <name>` or the default. */
  via: string;
  /** A directory with ca.pem, cert.pem and key.pem for tcp:// with TLS. */
  tlsDir?: string;
  tlsVerify: boolean;
  tls: boolean;
}

function readJson(path: string): Record<string, unknown> | undefined {
  try {
    const parsed = JSON.parse(readFileSync(path, 'utf8')) as unknown;
    return typeof parsed === 'object' && parsed !== null ? (parsed as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** The engine the docker CLI would talk to (the module comment gives the order). */
export function engineEndpoint(env: NodeJS.ProcessEnv = process.env): EngineEndpoint {
  const home = env.HOME || homedir();
  if (env.DOCKER_HOST) {
    return {
      host: env.DOCKER_HOST,
      via: 'DOCKER_HOST',
      tlsDir: env.DOCKER_CERT_PATH || join(home, '.docker'),
      tlsVerify: Boolean(env.DOCKER_TLS_VERIFY),
      tls: Boolean(env.DOCKER_TLS_VERIFY || env.DOCKER_TLS),
    };
  }
  const configDir = env.DOCKER_CONFIG || join(home, '.docker');
  const current = readJson(join(configDir, 'config.json'))?.currentContext;
  const name = env.DOCKER_CONTEXT || (typeof current === 'string' ? current : '');
  if (name && name !== 'default') {
    // docker keeps a context under the sha256 of its name.
    const id = createHash('sha256').update(name).digest('hex');
    const endpoint = (
      readJson(join(configDir, 'contexts', 'meta', id, 'meta.json'))?.Endpoints as
        Record<string, unknown> | undefined
    )?.docker as { Host?: unknown; SkipTLSVerify?: unknown } | undefined;
    if (typeof endpoint?.Host !== 'string') {
      throw new ActionError(
        `docker-daemon: the docker context '${externalText(name, 60)}' (${env.DOCKER_CONTEXT ? 'DOCKER_CONTEXT' : `currentContext in ${join(configDir, 'config.json')}`}) has no docker endpoint in ${join(configDir, 'contexts', 'meta')}.`,
      );
    }
    const tlsDir = join(configDir, 'contexts', 'tls', id, 'docker');
    let tls = false;
    try {
      readFileSync(join(tlsDir, 'ca.pem'));
      tls = true;
    } catch {
      // a context without TLS material talks plain tcp (or a socket)
    }
    return {
      host: endpoint.Host,
      via: `docker context ${name}`,
      tlsDir,
      tlsVerify: tls && endpoint.SkipTLSVerify !== true,
      tls,
    };
  }
  return { host: DEFAULT_DOCKER_HOST, via: 'the default socket', tlsVerify: false, tls: false };
}

export function dockerEngine(env: NodeJS.ProcessEnv = process.env): DockerEngine {
  const endpoint = engineEndpoint(env);
  const address = `${endpoint.host} (${endpoint.via})`;
  const timeouts = { headersTimeout: HEADERS_TIMEOUT_MS, bodyTimeout: BODY_TIMEOUT_MS };
  if (endpoint.host.startsWith('unix://')) {
    const socketPath = endpoint.host.slice('unix://'.length);
    return {
      address,
      origin: 'http://docker',
      dispatcher: new Agent({ ...timeouts, connect: { socketPath } }),
    };
  }
  if (endpoint.host.startsWith('tcp://')) {
    const hostPort = endpoint.host.slice('tcp://'.length).replace(/\/+$/, '');
    if (!endpoint.tls) return { address, origin: `http://${hostPort}`, dispatcher: new Agent(timeouts) };
    const read = (name: string, required: boolean) => {
      const path = join(endpoint.tlsDir ?? '', name);
      try {
        return readFileSync(path, 'utf8');
      } catch (error) {
        if (!required) return undefined;
        throw new ActionError(
          `docker-daemon: ${address} uses TLS, but ${path} cannot be read: ${errorMessage(error)}`,
        );
      }
    };
    // A client certificate when there is one; the CA only matters when the engine's certificate is verified.
    const connect = {
      ca: endpoint.tlsVerify ? read('ca.pem', true) : undefined,
      cert: read('cert.pem', false),
      key: read('key.pem', false),
      rejectUnauthorized: endpoint.tlsVerify,
    };
    return { address, origin: `https://${hostPort}`, dispatcher: new Agent({ ...timeouts, connect }) };
  }
  const scheme = /^[a-z]+:\/\//i.exec(endpoint.host)?.[0] ?? endpoint.host;
  throw new ActionError(
    `docker-daemon: ${externalText(scheme, 40)}… (${endpoint.via}) is not supported (only unix:// and tcp://); for ssh, forward the engine's socket (ssh -L) and point DOCKER_HOST at the local end.`,
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

/**
 * The engine's ID of `ref` (`GET /images/<ref>/json`, as `docker image inspect` asks). The export is asked for
 * by that ID and must be that image: a tag another step moves meanwhile cannot change what is pushed, and no
 * name has to match (podman's Docker API names `app:build` `localhost/app:build`).
 */
async function resolveImageId(engine: DockerEngine, ref: string, subject: string): Promise<string> {
  // As the docker CLI sends it: the name's slashes and colons as they are, anything else escaped.
  const name = encodeURIComponent(ref).replace(/%2F/g, '/').replace(/%3A/g, ':').replace(/%40/g, '@');
  let body: Buffer;
  try {
    const response = await engine.dispatcher.request({
      origin: engine.origin,
      path: `/images/${name}/json`,
      method: 'GET',
      signal: AbortSignal.timeout(INSPECT_TIMEOUT_MS),
    });
    // An error page is read to its start only: it may never end.
    body = await readPrefix(
      response.body,
      response.statusCode === 200 ? INSPECT_LIMIT + 1 : ERROR_BODY_LIMIT,
    );
    if (response.statusCode !== 200) {
      throw new ActionError(
        `cannot read the source ${subject}: ${engineRefusal(response.statusCode, body.toString('utf8'), ref)}`,
      );
    }
  } catch (error) {
    if (error instanceof ActionError) throw error;
    const why =
      (error as { name?: unknown }).name === 'TimeoutError'
        ? `the Docker engine did not say which image ${ref} is within ${formatDuration(INSPECT_TIMEOUT_MS)}.`
        : unreachable(error, engine.address);
    throw new ActionError(`cannot read the source ${subject}: ${why}`, { cause: error });
  }
  let id: unknown;
  try {
    id =
      body.length > INSPECT_LIMIT
        ? undefined
        : (JSON.parse(body.toString('utf8')) as { Id?: unknown } | null)?.Id;
  } catch {
    // not JSON: said below
  }
  if (typeof id !== 'string' || !IMAGE_ID.test(id)) {
    throw new ActionError(
      `cannot read the source ${subject}: the Docker engine's answer for ${ref} (GET /images/…/json) names no image ID (sha256:<64 hex>): ${externalText(body.toString('utf8'), 100) || 'empty'}.`,
    );
  }
  return id;
}

/**
 * Exports `ref` from the engine into an OCI layout under `scratch` and reads the image from it, with the
 * engine's ID of that image (what `docker build` and `docker images` print), for the log and the summary.
 */
export async function readDockerDaemonImage(
  ref: string,
  options: DockerDaemonOptions,
): Promise<LocalImage & { engineImageId: string }> {
  const engine = dockerEngine(options.env);
  const subject = `docker-daemon:${ref}`;
  const layoutDir = join(options.scratch, 'layout');
  const compression = options.compression ?? 'gzip';
  options.log(`Exporting ${ref} from the Docker engine at ${engine.address}`);
  let imageId: string;
  // One deadline for the export: its stream, and the checks of what it held once it has ended.
  const deadline = AbortSignal.timeout(options.timeoutMs);
  try {
    imageId = await resolveImageId(engine, ref, subject);
    options.log(`${ref} is the engine's image ${imageId}; exporting that image by its ID`);
    const response = await engine.dispatcher
      .request({
        origin: engine.origin,
        path: `/images/get?${new URLSearchParams({ names: imageId }).toString()}`,
        method: 'GET',
        signal: deadline,
      })
      .catch((error: unknown) => {
        throw new ActionError(`cannot read the source ${subject}: ${unreachable(error, engine.address)}`);
      });
    if (response.statusCode !== 200) {
      // Its start only: an engine (or what answers in its place) may send an error page that never ends.
      const body = await readPrefix(response.body, ERROR_BODY_LIMIT).catch(() => Buffer.alloc(0));
      throw new ActionError(
        `cannot read the source ${subject}: ${engineRefusal(response.statusCode, body.toString('utf8'), ref)}`,
      );
    }
    try {
      await dockerSaveToLayout(response.body, {
        layoutDir,
        compress: compression === 'gzip' ? 'gzip' : 'none',
        what: subject,
        imageId,
        signal: deadline,
      });
    } catch (error) {
      if (error instanceof ActionError) throw error;
      // The export's own messages name the source already.
      const said = errorMessage(error);
      const own = said.startsWith(`${subject}: `) ? said.slice(subject.length + 2) : said;
      const why =
        (error as { name?: unknown }).name === 'TimeoutError'
          ? `the Docker engine's export did not end within ${formatDuration(options.timeoutMs)}.`
          : (error as { code?: unknown }).code === 'UND_ERR_SOCKET'
            ? `the Docker engine closed the connection before the export ended (${externalText(own, 100)}).`
            : externalText(own, 300);
      throw new ActionError(`cannot read the source ${subject}: ${why}`, { cause: error });
    }
  } finally {
    // destroy, not close: after a failure mid-export the rest of the body is not wanted, and close would wait for it.
    await engine.dispatcher.destroy();
  }
  const image =
    compression === 'gzip'
      ? await readOciLayout(layoutDir, 'image')
      : // zstd is left to skopeo, as for every other source (Node.js has no zstd before 22.15).
        await openImageSource(
          { transport: 'oci', location: layoutDir, ref: 'image' },
          { ...options, compression, tlsVerify: true },
        );
  return { ...image, engineImageId: imageId };
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
