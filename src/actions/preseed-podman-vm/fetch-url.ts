/**
 * Downloading an image from a URL: a user's `image: https://…`, or the disk a Fedora CoreOS stream names. It goes
 * through the environment's proxy (as the stream itself is fetched), keeps the bytes as sent (never decoded),
 * follows redirects but not from https to http, retries 5xx/408/429 and broken connections,
 * and fails a download that makes no progress, or grows slower than the low-speed limit, over the stall time (a
 * server trickling a few bytes every few seconds would otherwise hold the job until its 6 h limit).
 *
 * Neither a URL nor a stream gives a size we could trust in advance, so nothing here may fill the runner's disk:
 * a body is never taken past its Content-Length (node's HTTP parser ends the response there; the count below
 * holds even if a client did not), nor past the download limit when it has none (an endless chunked body), and
 * an announced size is refused at once when it is over that limit or over the free space of the destination.
 * On any failure the partial file is removed here; main's scratch dir (removed by post) covers a killed job.
 */
import { open, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ensureRoom } from '../../core/files.js';
import type { Host } from '../../core/host.js';
import { readSizeEnv } from '../../core/inputs.js';
import { withLowSpeedLimit } from '../../core/low-speed.js';
import { externalText, networkFailure } from '../../core/oci/response.js';
import {
  backoffDelay,
  isRetryableStatus,
  parseRetryAfter,
  TransientError,
  type RetryPolicy,
} from '../../core/oci/retry.js';
import { sleep } from '../../core/process.js';
import {
  SENT_ENCODING_HEADER,
  urlCredentials,
  withProxiedFetch,
  type ProxiedFetch,
  type UrlCredentials,
} from '../../core/proxy-env.js';
import { ActionError } from '../../core/run.js';
import { formatBytes } from '../../core/summary.js';
import { ProgressLog } from './progress.js';
import { fetchFollowing, MAX_REDIRECTS, RedirectNotFollowed } from '../../core/redirects.js';

const STALL_MS = 5 * 60_000;

/** As @actions/tool-cache did before: three tries, the later ones after a pause. */
const URL_RETRY: RetryPolicy = {
  retries: 2,
  baseDelayMs: 2000,
  maxDelayMs: 20_000,
  maxRetryAfterMs: 120_000,
};

export const DOWNLOAD_MAX_SIZE_ENV = 'IMAGE_CI_DOWNLOAD_MAX_SIZE';
/**
 * Podman machine disks are about 1 GiB compressed (machine-os `.zst`, Fedora CoreOS `.xz`/`.gz`/`.zip`), an
 * uncompressed qcow2 about 2–3 GiB; 8 GiB leaves room for those and still stops a runaway body well before a
 * hosted runner's disk (14 GB of SSD on the standard Linux runner) is full.
 */
export const DEFAULT_DOWNLOAD_MAX_BYTES = 8 * 1024 ** 3;

/** The most a URL download may bring: IMAGE_CI_DOWNLOAD_MAX_SIZE (with a unit), else the default. */
export function downloadSizeLimit(env: NodeJS.ProcessEnv = process.env): number {
  return readSizeEnv(DOWNLOAD_MAX_SIZE_ENV, env) ?? DEFAULT_DOWNLOAD_MAX_BYTES;
}

export interface UrlDownloadOptions {
  stallMs?: number;
  /** The download limit (downloadSizeLimit); read by the caller so a mistake in it is an input error. */
  maxBytes?: number;
}

/** A refusal that another try cannot change (too large, no room, the disk full): not retried. */
class DownloadRefused extends ActionError {}

/** No progress over the stall time: not retried (as before), a server that stalled once is likely to again. */
class Stalled extends ActionError {}

/**
 * The body's chunks as they come, counted: throws once they pass what the server announced or, without an
 * announcement, the download limit, before the chunk that passes it is handed on (so it is never written).
 */
export async function* boundedBody<T extends { length: number }>(
  body: AsyncIterable<T> | Iterable<T>,
  shown: string,
  announced: number | undefined,
  maxBytes: number,
): AsyncGenerator<T, void, undefined> {
  let received = 0;
  for await (const chunk of body) {
    received += chunk.length;
    if (announced !== undefined && received > announced) {
      throw new DownloadRefused(
        `${shown} sent more than the ${announced} bytes its Content-Length announces (${received} so far); download stopped.`,
      );
    }
    if (received > maxBytes) {
      throw new DownloadRefused(
        `${shown} sent more than the download limit of ${formatBytes(maxBytes)} (${maxBytes} bytes) without ` +
          `announcing a size; download stopped. Raise ${DOWNLOAD_MAX_SIZE_ENV} (e.g. 16GiB) if the image is that large.`,
      );
    }
    yield chunk;
  }
}

/** Content-Length as a byte count; undefined when absent or not a plain number (then the limit alone counts). */
function announcedLength(value: string | null): number | undefined {
  if (value === null || !/^\d+$/.test(value.trim())) return undefined;
  const n = Number(value.trim());
  return Number.isSafeInteger(n) ? n : undefined;
}

export async function downloadUrl(
  host: Host,
  url: string,
  dest: string,
  { stallMs = STALL_MS, maxBytes = DEFAULT_DOWNLOAD_MAX_BYTES }: UrlDownloadOptions = {},
): Promise<number> {
  // `user:password@` is sent as Basic auth (fetch refuses a URL holding it), to that host only; masked, and
  // left out of the URL that messages name.
  const target = new URL(url);
  let credentials: UrlCredentials | undefined;
  try {
    credentials = urlCredentials(target);
  } catch {
    throw new DownloadRefused(
      "the download URL's user or password has a malformed %-escape; download refused.",
    );
  }
  for (const secret of credentials?.secrets ?? []) host.setSecret(secret);
  target.username = '';
  target.password = '';
  // A stream's disk location comes from outside: it reaches messages as one line of plain text.
  const shown = externalText(target.href, 300);
  const transfer = {
    host,
    url: target.href,
    authorization: credentials?.authorization,
    shown,
    dest,
    stallMs,
    maxBytes,
  };
  try {
    return await withProxiedFetch(stallMs, (fetch) => fetchWithRetries({ ...transfer, fetch }), undefined, {
      bodyAsSent: true,
    });
  } catch (error) {
    await rm(dest, { force: true });
    throw error;
  }
}

/** One download: `shown` is the URL as messages may name it. */
interface Transfer {
  host: Host;
  fetch: ProxiedFetch;
  url: string;
  /** Basic auth from the URL's `user:password@`: sent to the URL's own origin, never to a redirect's other one. */
  authorization: string | undefined;
  shown: string;
  dest: string;
  stallMs: number;
  maxBytes: number;
}

async function fetchWithRetries(transfer: Transfer): Promise<number> {
  const { host, shown, stallMs } = transfer;
  for (let attempt = 0; ; attempt++) {
    try {
      return await fetchOnce(transfer);
    } catch (error) {
      const failure =
        error instanceof DownloadRefused || error instanceof Stalled
          ? error
          : networkFailure(error, `download of ${shown}`, stallMs);
      if (!(failure instanceof TransientError) || attempt >= URL_RETRY.retries) throw failure;
      host.info(`${failure.message}; trying again`);
      await sleep(backoffDelay(attempt, URL_RETRY, failure.retryAfterMs));
    }
  }
}

/**
 * `url`'s answer at the end of its redirects (core/redirects' rule: a hop from https to http is refused, as
 * @actions/tool-cache's client did, since a disk over plain http can be swapped on the way and a URL image has no
 * published checksum to notice), asking for the file's own bytes (what its sha256 is of), so a server compressing
 * on the fly leaves them be.
 */
async function openFollowing(
  { fetch, url, authorization, shown }: Transfer,
  signal: AbortSignal,
): Promise<Response> {
  return fetchFollowing(fetch, url, {
    signal,
    headers: { 'accept-encoding': 'identity' },
    authorization,
  }).catch((error: unknown) => {
    if (!(error instanceof RedirectNotFollowed)) throw error;
    throw new DownloadRefused(
      error.tooMany
        ? `download of ${shown}: more than ${MAX_REDIRECTS} redirects; download refused.`
        : `download of ${shown}: ${error.message}; download refused.`,
    );
  });
}

async function fetchOnce(transfer: Transfer): Promise<number> {
  const { host, shown, dest, stallMs, maxBytes } = transfer;
  // Silence (before the headers or mid-body) aborts the request; every chunk starts the clock again.
  const silence = new AbortController();
  const stalled = new Stalled(`download of ${shown} made no progress for ${Math.round(stallMs / 1000)} s`);
  let timer = setTimeout(() => silence.abort(stalled), stallMs);
  const progressed = () => {
    clearTimeout(timer);
    timer = setTimeout(() => silence.abort(stalled), stallMs);
  };
  const file = await open(dest, 'w', 0o644);
  try {
    const response = await openFollowing(transfer, silence.signal).catch((error: unknown) => {
      throw silence.signal.aborted ? stalled : error;
    });
    progressed();
    if (response.status !== 200) {
      await response.body?.cancel().catch(() => undefined);
      const what = `download of ${shown}: the server answered HTTP ${response.status}`;
      if (isRetryableStatus(response.status)) {
        throw new TransientError(what, response.status, parseRetryAfter(response.headers.get('retry-after')));
      }
      throw new DownloadRefused(what);
    }
    // Kept as sent (withProxiedFetch's bodyAsSent): a mirror that labels a `.gz` `Content-Encoding: gzip` serves
    // the file itself, whose sha256 is published; Content-Length counts those bytes.
    const encoding = externalText(response.headers.get(SENT_ENCODING_HEADER) ?? '', 40);
    if (encoding !== '' && encoding.toLowerCase() !== 'identity') {
      host.info(
        `${shown} comes with Content-Encoding: ${encoding}; kept as sent (not decoded), as the file's own bytes.`,
      );
    }
    const announced = announcedLength(response.headers.get('content-length'));
    if (announced !== undefined) {
      if (announced > maxBytes) {
        await response.body?.cancel().catch(() => undefined);
        throw new DownloadRefused(
          `${shown} announces ${formatBytes(announced)} (${announced} bytes), more than the download limit of ` +
            `${formatBytes(maxBytes)} (${maxBytes} bytes); download refused. Raise ${DOWNLOAD_MAX_SIZE_ENV} if the image is that large.`,
        );
      }
      try {
        await ensureRoom(dirname(dest), announced, `${shown}: the download`);
      } catch (error) {
        await response.body?.cancel().catch(() => undefined);
        throw new DownloadRefused(`${(error as Error).message} Download refused before its first byte.`);
      }
    }
    const progress = new ProgressLog(host, `Downloading ${shown}`, announced);
    let written = 0;
    const body = withLowSpeedLimit(
      boundedBody(response.body ?? [], shown, announced, maxBytes),
      stallMs,
      (reason) => new Stalled(`download of ${shown}: ${reason}`),
    );
    try {
      for await (const chunk of body) {
        progressed();
        for (let done = 0; done < chunk.length;) {
          done += (await file.write(chunk, done, chunk.length - done)).bytesWritten;
        }
        written += chunk.length;
        progress.update(written);
      }
    } catch (error) {
      if (silence.signal.aborted) throw stalled;
      if ((error as NodeJS.ErrnoException).code === 'ENOSPC') {
        throw new DownloadRefused(
          `${dirname(dest)} is full after ${formatBytes(written)} (${written} bytes) of ${shown}; download stopped.`,
        );
      }
      throw error;
    }
    progress.done(written);
    return written;
  } finally {
    clearTimeout(timer);
    await file.close();
  }
}
