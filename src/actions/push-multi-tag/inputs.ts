import {
  InputError,
  readBoolean,
  readBytes,
  readInteger,
  readList,
  readRequiredString,
  readString,
  type InputSource,
} from '../../core/inputs.js';

export interface PushInputs {
  source: string;
  repositories: string[];
  tags: string[];
  username?: string;
  password?: string;
  authFile?: string;
  tlsVerify: boolean;
  insecureRegistries: string[];
  concurrency: number;
  chunkSize: number;
  compression?: 'gzip' | 'zstd';
  digestFile?: string;
}

export function readInputs(src: InputSource): PushInputs {
  // Mask first: nothing below may echo the password before the runner knows it is secret.
  const password = readString(src, 'password');
  const username = readString(src, 'username');
  if (password && !username) throw new InputError('password', 'was given without `username`; set both.');
  const repositories = readList(src, 'repositories');
  if (repositories.length === 0) throw new InputError('repositories', 'is required but was not given.');
  const tags = readList(src, 'tags');
  if (tags.length === 0) throw new InputError('tags', 'is required but was not given.');
  const compression = readString(src, 'compression');
  if (compression !== undefined && compression !== 'gzip' && compression !== 'zstd') {
    throw new InputError('compression', `must be gzip or zstd; got '${compression}'.`);
  }
  return {
    source: readRequiredString(src, 'source'),
    repositories,
    tags,
    username,
    password,
    authFile: readString(src, 'auth-file'),
    tlsVerify: readBoolean(src, 'tls-verify', true),
    insecureRegistries: readList(src, 'insecure-registries'),
    concurrency: readInteger(src, 'concurrency', 4, { min: 1, max: 64 }),
    chunkSize: readBytes(src, 'chunk-size', 0),
    compression,
    digestFile: readString(src, 'digest-file'),
  };
}
