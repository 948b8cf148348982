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
import { isValidTag, parseRepository } from '../../core/oci/reference.js';
import { errorMessage } from '../../core/run.js';
import { normaliseAuthKey } from './auth-files.js';
import { Inputs } from './constants.js';
import { parseImageSource, type Compression, type ImageSourceSpec } from './source.js';

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

function readDestinations(src: InputSource): Destination[] {
  const list = readList(src, Inputs.repositories);
  if (list.length === 0) throw new InputError(Inputs.repositories, 'is required but was not given.');
  const seen = new Set<string>();
  return list.map((text) => {
    let parsed: Destination;
    try {
      parsed = parseRepository(text);
    } catch (error) {
      throw new InputError(Inputs.repositories, `${errorMessage(error)} Write host[:port]/path.`);
    }
    const explicitHost = text.split('/')[0]!;
    if (!text.includes('/') || !/[.:]|^localhost$/.test(explicitHost)) {
      throw new InputError(
        Inputs.repositories,
        `'${text}' names no registry host; write host[:port]/path (e.g. ghcr.io/org/app or docker.io/org/app).`,
      );
    }
    const key = `${parsed.registry}/${parsed.repository}`;
    if (seen.has(key)) throw new InputError(Inputs.repositories, `'${text}' is listed twice.`);
    seen.add(key);
    return parsed;
  });
}

function readTags(src: InputSource): string[] {
  const tags = readList(src, Inputs.tags);
  if (tags.length === 0)
    throw new InputError(Inputs.tags, 'is required but was not given (e.g. `1.2.3, latest`).');
  for (const tag of tags) {
    if (!isValidTag(tag)) {
      throw new InputError(
        Inputs.tags,
        `'${tag}' is not a valid tag: use [A-Za-z0-9_][A-Za-z0-9._-]{0,127}.`,
      );
    }
  }
  return [...new Set(tags)];
}

export function readInputs(src: InputSource): PushInputs {
  const password = readString(src, Inputs.password);
  const username = readString(src, Inputs.username);
  if (password && !username) throw new InputError(Inputs.password, 'was given without `username`; set both.');
  if (username && !password) throw new InputError(Inputs.username, 'was given without `password`; set both.');
  const sourceText = readRequiredString(src, Inputs.source);
  let source: ImageSourceSpec;
  try {
    source = parseImageSource(sourceText);
  } catch (error) {
    throw new InputError(Inputs.source, errorMessage(error));
  }
  const compression = readString(src, Inputs.compression);
  return {
    source,
    repositories: readDestinations(src),
    tags: readTags(src),
    username,
    password,
    authFile: readString(src, Inputs.authFile),
    tlsVerify: readBoolean(src, Inputs.tlsVerify, true),
    insecureRegistries: readList(src, Inputs.insecureRegistries).map(insecureRegistry),
    concurrency: readInteger(src, Inputs.concurrency, 4, { min: 1, max: 64 }),
    chunkSize: readBytes(src, Inputs.chunkSize, 0),
    compression:
      compression === undefined
        ? undefined
        : readEnum<Compression>(src, Inputs.compression, ['gzip', 'zstd'], 'gzip'),
    digestFile: readString(src, Inputs.digestFile),
    atomic: readBoolean(src, Inputs.atomic, true),
    referrers: readBoolean(src, Inputs.referrers, true),
    dryRun: readBoolean(src, Inputs.dryRun, false),
  };
}

/**
 * An insecure-registries entry as a registry name: written as a URL, with a trailing slash or by a Docker Hub
 * alias it still means the registry (as docker and podman read it); a path would suggest it covers only part
 * of one, which it cannot: one registry has one TLS setting.
 */
function insecureRegistry(entry: string): string {
  // docker's daemon.json takes CIDR ranges and podman's registries.conf wildcards; here each would match nothing
  // and leave the setting silently unused.
  const unsupported = /^[\d.]+\/\d+$|^[\da-f:]+\/\d+$/i.test(entry)
    ? 'is a CIDR range'
    : entry.includes('*')
      ? 'is a wildcard'
      : /^([a-z]+:\/\/)?[^/]*@/i.test(entry)
        ? 'carries a user name'
        : undefined;
  if (unsupported) {
    throw new InputError(
      Inputs.insecureRegistries,
      `'${entry}' ${unsupported}, which this input does not take; list each registry as host[:port].`,
    );
  }
  const registry = normaliseAuthKey(entry);
  if (registry.includes('/')) {
    throw new InputError(
      Inputs.insecureRegistries,
      `'${entry}' names a path; list registries as host[:port] (the setting covers a whole registry).`,
    );
  }
  return registry;
}
