/** Content digests: every blob and manifest is checked against the digest that names it. */
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { Transform, type TransformCallback } from 'node:stream';

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

/** A pass-through stream that feeds what flows through it into a hash (an upload verifies what it sent). */
export class HashingStream extends Transform {
  constructor(private readonly hash: Hash) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    callback(null, chunk);
  }
}

export function newHash(digest: string): Hash {
  return createHash(digestAlgorithm(digest));
}

export function hashDigest(hash: Hash, expected: string): string {
  return `${digestAlgorithm(expected)}:${hash.digest('hex')}`;
}

/** The digest of a file on disk (used by preseed-podman-vm to check cached images). */
export async function digestFile(path: string, algorithm = 'sha256'): Promise<string> {
  const hash = createHash(algorithm);
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return `${algorithm}:${hash.digest('hex')}`;
}
