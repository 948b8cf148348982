/** Content digests: every blob and manifest is checked against the digest that names it. */
import { createHash, type Hash } from 'node:crypto';
import { fileChunks } from '../files.js';

const SUPPORTED = new Set(['sha256', 'sha512']);

export function digestAlgorithm(digest: string): string {
  const algorithm = digest.slice(0, digest.indexOf(':'));
  if (!SUPPORTED.has(algorithm)) throw new Error(`unsupported digest algorithm in '${digest}'.`);
  return algorithm;
}

export function digestOf(data: Buffer, algorithm = 'sha256'): string {
  return `${algorithm}:${createHash(algorithm).update(data).digest('hex')}`;
}

export class DigestMismatchError extends Error {
  constructor(what: string, expected: string, actual: string) {
    super(`${what}: content has digest ${actual}, expected ${expected}.`);
    this.name = 'DigestMismatchError';
  }
}

export function verifyDigest(what: string, data: Buffer, expected: string): void {
  const actual = digestOf(data, digestAlgorithm(expected));
  if (actual !== expected) throw new DigestMismatchError(what, expected, actual);
}

export function newHash(digest: string): Hash {
  return createHash(digestAlgorithm(digest));
}

export function hashDigest(hash: Hash, expected: string): string {
  return `${digestAlgorithm(expected)}:${hash.digest('hex')}`;
}

/** The digest of a file on disk (preseed-podman-vm's images, prune-simplestreams' verify). */
export async function digestFile(path: string, algorithm = 'sha256'): Promise<string> {
  const hash = createHash(algorithm);
  await hashFile(hash, path);
  return `${algorithm}:${hash.digest('hex')}`;
}

/** Feeds the bytes [start, end) of a file (all of it by default) into `hash`. */
export async function hashFile(hash: Hash, path: string, start?: number, end?: number): Promise<void> {
  for await (const chunk of fileChunks(path, start, end)) hash.update(chunk);
}
