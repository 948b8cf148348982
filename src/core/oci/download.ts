/**
 * Blob downloads to a file, for blobs of any size on any link: no deadline while bytes keep coming (only the
 * transport's silence timeout, and the low-speed limit against a body that trickles); a retry after a cut connection asks for the rest with `Range` and appends when
 * the registry answers 206, else starts the file over; the size the descriptor declares is a hard limit and
 * must fit on the target filesystem before the first byte is asked for. The digest is verified before the file
 * gets its name; on any failure nothing is left behind.
 */
import { randomBytes, type Hash } from 'node:crypto';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ensureRoom } from '../files.js';
import { withLowSpeedLimit } from '../low-speed.js';
import { DigestMismatchError, hashDigest, newHash } from './digest.js';
import { RegistryError } from './errors.js';
import { networkFailure, type RegistryResponse } from './response.js';
import { TransientError, type RetryBudget } from './retry.js';
import { pullScope } from './token.js';
import type { RegistryTransport } from './transport.js';

export interface DownloadOptions {
  /** The size the descriptor declares: the download stops as soon as more arrives, and must fit on disk. */
  size?: number;
  /** The bytes of the file so far: a restart from zero goes back to 0, so the file is counted once. */
  onProgress?: (written: number) => void;
}

/** What is on disk so far; the hash has seen exactly the bytes written. */
interface Partial {
  file: FileHandle;
  written: number;
  hash: Hash;
}

export async function downloadBlob(
  transport: RegistryTransport,
  repository: string,
  digest: string,
  destPath: string,
  options: DownloadOptions = {},
): Promise<{ size: number }> {
  const what = `GET blob ${digest} from ${repository}`;
  if (options.size !== undefined) {
    if (!Number.isSafeInteger(options.size) || options.size < 0) {
      throw new RegistryError(
        `${what}: the descriptor declares an impossible size (${String(options.size)}).`,
      );
    }
    await ensureRoom(dirname(destPath), options.size, `${what}: the blob`);
  }
  const temp = join(dirname(destPath), `.${basename(destPath)}.${randomBytes(4).toString('hex')}.part`);
  const partial: Partial = { file: await open(temp, 'w', 0o644), written: 0, hash: newHash(digest) };
  try {
    const budget = transport.budget();
    for (;;) {
      try {
        await fetchRest(transport, budget, { repository, digest, what }, partial, options);
        break;
      } catch (error) {
        const failure = networkFailure(error, what, transport.timeoutMs);
        if (!(failure instanceof TransientError)) throw failure;
        await budget.next(failure);
      }
    }
    await partial.file.close();
    const actual = hashDigest(partial.hash, digest);
    if (actual !== digest) throw new DigestMismatchError(`blob from ${repository}`, digest, actual);
    await rename(temp, destPath);
    return { size: partial.written };
  } catch (error) {
    await partial.file.close().catch(() => undefined);
    await rm(temp, { force: true });
    throw error;
  }
}

/** One try: asks for what is still missing and appends it, or starts over when the registry sends it all. */
async function fetchRest(
  transport: RegistryTransport,
  budget: RetryBudget,
  { repository, digest, what }: { repository: string; digest: string; what: string },
  partial: Partial,
  options: DownloadOptions,
): Promise<void> {
  const response = await transport.send(
    {
      method: 'GET',
      url: transport.url(`${repository}/blobs/${digest}`),
      scopes: [pullScope(repository)],
      headers: partial.written > 0 ? { range: `bytes=${partial.written}-` } : {},
      ok: [200, 206],
      what,
      streaming: true,
    },
    budget,
  );
  if (response.status === 206 && rangeStart(response) !== partial.written) {
    await response.drain();
    await startOver(partial, digest, options);
    throw new TransientError(`${what}: the registry answered a range request with another range.`);
  }
  // No ranges here: the whole blob comes again, so the file starts over (and progress with it).
  if (response.status === 200 && partial.written > 0) await startOver(partial, digest, options);
  const limit = options.size;
  const announced = Number(response.header('content-length') ?? NaN);
  if (limit !== undefined && partial.written + announced > limit) {
    await response.drain();
    throw new RegistryError(
      `${what}: the registry announces ${partial.written + announced} bytes, more than the ${limit} bytes ` +
        'the descriptor declares; download refused.',
    );
  }
  // A body that trickles is a stall too: resumed with Range like a cut one, not waited on for hours.
  const body = withLowSpeedLimit(
    response.body as AsyncIterable<Buffer>,
    transport.timeoutMs,
    (reason) => new TransientError(`${what}: ${reason}`),
  );
  for await (const chunk of body) {
    if (limit !== undefined && partial.written + chunk.length > limit) {
      response.body.destroy();
      throw new RegistryError(
        `${what}: the registry sent more than the ${limit} bytes the descriptor declares; download stopped.`,
      );
    }
    for (let done = 0; done < chunk.length;) {
      done += (await partial.file.write(chunk, done, chunk.length - done, partial.written + done))
        .bytesWritten;
    }
    partial.hash.update(chunk);
    partial.written += chunk.length;
    options.onProgress?.(partial.written);
  }
  if (limit !== undefined && partial.written < limit) {
    // A body that ended early without an error (no Content-Length): ask for the rest like after a cut.
    throw new TransientError(`${what}: the body ended after ${partial.written} of ${limit} bytes.`);
  }
}

function rangeStart(response: RegistryResponse): number | undefined {
  const m = /^bytes (\d+)-/.exec(response.header('content-range') ?? '');
  return m ? Number(m[1]) : undefined;
}

async function startOver(partial: Partial, digest: string, options: DownloadOptions): Promise<void> {
  await partial.file.truncate(0);
  partial.written = 0;
  partial.hash = newHash(digest);
  options.onProgress?.(0);
}
