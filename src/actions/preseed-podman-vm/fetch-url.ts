/**
 * Downloading an image from a URL with @actions/tool-cache (retries 5xx/408/429, proxy settings of the runner).
 * That API has no progress callback or timeout, so the growing file is watched: it gives the progress line and
 * fails a download that stops growing, or that grows slower than the low-speed limit over the stall time (a
 * server trickling a few bytes every few seconds would otherwise hold the job until its 6 h limit).
 */
import { stat } from 'node:fs/promises';
import type { Host } from '../../core/host.js';
import { LowSpeedLimit } from '../../core/low-speed.js';
import { ProgressLog } from './progress.js';

const POLL_MS = 1000;
const STALL_MS = 5 * 60_000;

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

export async function downloadUrl(
  host: Host,
  url: string,
  dest: string,
  stallMs = STALL_MS,
): Promise<number> {
  const progress = new ProgressLog(host, `Downloading ${url}`, undefined);
  let lastSize = 0;
  let lastGrowth = Date.now();
  let lastPoll = Date.now();
  const speed = new LowSpeedLimit(stallMs);
  let timer: NodeJS.Timeout | undefined;
  const stalled = new Promise<never>((_, reject) => {
    timer = setInterval(() => {
      void sizeOf(dest).then((size) => {
        const now = Date.now();
        // A file the library started over (a retry) has not grown.
        const slow = speed.arrived(Math.max(0, size - lastSize), now - lastPoll);
        lastPoll = now;
        if (slow) reject(new Error(`download of ${url}: ${slow}`));
        if (size !== lastSize) {
          lastSize = size;
          lastGrowth = Date.now();
          progress.update(size);
        } else if (Date.now() - lastGrowth > stallMs) {
          reject(new Error(`download of ${url} made no progress for ${Math.round(stallMs / 1000)} s`));
        }
      });
    }, POLL_MS);
  });
  try {
    // Loaded here: every other action (and a cached image) never needs the library.
    const { downloadTool } = await import('@actions/tool-cache');
    await Promise.race([downloadTool(url, dest), stalled]);
  } finally {
    clearInterval(timer);
  }
  const size = await sizeOf(dest);
  progress.done(size);
  return size;
}
