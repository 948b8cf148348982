import {
  InputError,
  readBoolean,
  readBytes,
  readEnum,
  readInteger,
  readList,
  readRequiredString,
  readString,
  type InputSource,
} from '../../core/inputs.js';
import { normaliseAuthKey } from '../../core/auth.js';
import { isValidTag, parseRepository } from '../../core/oci/reference.js';
import { parseImageSource, type Compression, type ImageSourceSpec } from '../../core/oci/source.js';

export interface Destination {
  /** host[:port] */
  registry: string;
  repository: string;
}

export interface PushInputs {
  source: ImageSourceSpec;
  repositories: Destination[];
  tags: string[];
  username?: string;
  password?: string;
  authFile?: string;
  tlsVerify: boolean;
  insecureRegistries: string[];
  concurrency: number;
  chunkSize: number;
  compression?: Compression;
  digestFile?: string;
  /** Tags move only once every registry holds everything by digest. */
  atomic: boolean;
  /** Copy the image's referrers and cosign artifacts along with it. */
  referrers: boolean;
  /** Look and report, change nothing. */
  dryRun: boolean;
}

export const Input = {
  source: 'source',
  repositories: 'repositories',
  tags: 'tags',
  username: 'username',
  password: 'password',
  authFile: 'auth-file',
  tlsVerify: 'tls-verify',
  insecureRegistries: 'insecure-registries',
  concurrency: 'concurrency',
  chunkSize: 'chunk-size',
  compression: 'compression',
  digestFile: 'digest-file',
  atomic: 'atomic',
  referrers: 'referrers',
  dryRun: 'dry-run',
} as const;

function readDestinations(src: InputSource): Destination[] {
  const list = readList(src, Input.repositories);
  if (list.length === 0) throw new InputError(Input.repositories, 'is required but was not given.');
  const seen = new Set<string>();
  return list.map((text) => {
    let parsed: Destination;
    try {
      parsed = parseRepository(text);
    } catch (error) {
      throw new InputError(Input.repositories, `${(error as Error).message} Write host[:port]/path.`);
    }
    const explicitHost = text.split('/')[0]!;
    if (!text.includes('/') || !/[.:]|^localhost$/.test(explicitHost)) {
      throw new InputError(
        Input.repositories,
        `'${text}' names no registry host; write host[:port]/path (e.g. ghcr.io/org/app or docker.io/org/app).`,
      );
    }
    const key = `${parsed.registry}/${parsed.repository}`;
    if (seen.has(key)) throw new InputError(Input.repositories, `'${text}' is listed twice.`);
    seen.add(key);
    return parsed;
  });
}

function readTags(src: InputSource): string[] {
  const tags = readList(src, Input.tags);
  if (tags.length === 0)
    throw new InputError(Input.tags, 'is required but was not given (e.g. `1.2.3, latest`).');
  for (const tag of tags) {
    if (!isValidTag(tag)) {
      throw new InputError(Input.tags, `'${tag}' is not a valid tag: use [A-Za-z0-9_][A-Za-z0-9._-]{0,127}.`);
    }
  }
  return [...new Set(tags)];
}

export function readInputs(src: InputSource): PushInputs {
  const password = readString(src, Input.password);
  const username = readString(src, Input.username);
  if (password && !username) throw new InputError(Input.password, 'was given without `username`; set both.');
  if (username && !password) throw new InputError(Input.username, 'was given without `password`; set both.');
  const sourceText = readRequiredString(src, Input.source);
  let source: ImageSourceSpec;
  try {
    source = parseImageSource(sourceText);
  } catch (error) {
    throw new InputError(Input.source, (error as Error).message);
  }
  const compression = readString(src, Input.compression);
  return {
    source,
    repositories: readDestinations(src),
    tags: readTags(src),
    username,
    password,
    authFile: readString(src, Input.authFile),
    tlsVerify: readBoolean(src, Input.tlsVerify, true),
    insecureRegistries: readList(src, Input.insecureRegistries).map(insecureRegistry),
    concurrency: readInteger(src, Input.concurrency, 4, { min: 1, max: 64 }),
    chunkSize: readBytes(src, Input.chunkSize, 0),
    compression:
      compression === undefined
        ? undefined
        : readEnum<Compression>(src, Input.compression, ['gzip', 'zstd'], 'gzip'),
    digestFile: readString(src, Input.digestFile),
    atomic: readBoolean(src, Input.atomic, true),
    referrers: readBoolean(src, Input.referrers, true),
    dryRun: readBoolean(src, Input.dryRun, false),
  };
}

/**
 * An insecure-registries entry as a registry name: written as a URL, with a trailing slash or by a Docker Hub
 * alias it still means the registry (as docker and podman read it); a path would suggest it covers only part
 * of one, which it cannot: one registry has one TLS setting.
 */
function insecureRegistry(entry: string): string {
  const registry = normaliseAuthKey(entry);
  if (registry.includes('/')) {
    throw new InputError(
      Input.insecureRegistries,
      `'${entry}' names a path; list registries as host[:port] (the setting covers a whole registry).`,
    );
  }
  return registry;
}
