/**
 * The low-speed limit of downloads, as curl's `--speed-limit`/`--speed-time`: silence timeouts alone let a
 * server that trickles a few bytes every few seconds (a wedged proxy, a storage node dying slowly) hold a job
 * until its 6 h limit. A body that brings fewer than LOW_SPEED_BYTES_PER_SECOND on average over a whole window
 * (the caller's silence timeout) is treated as stalled, and retried or resumed as a stall is.
 *
 * 1 KiB/s is far below any link that can move an image or a cache (a 1 GiB layer would take 12 days at that
 * rate), so a slow but working link never hits it; averaged over the full silence window (60 s for registries,
 * 30 s per cache range) a burst after a pause counts as what it is. Only the time spent waiting for the network
 * counts: a reader that stops to write or hand bytes on is not the server's slowness.
 */
import { formatBytes } from './summary.js';

export const LOW_SPEED_BYTES_PER_SECOND = 1024;

export class LowSpeedLimit {
  private waitedMs = 0;
  private bytes = 0;

  constructor(
    private readonly windowMs: number,
    private readonly bytesPerSecond = LOW_SPEED_BYTES_PER_SECOND,
  ) {}

  /**
   * `bytes` arrived after `waitedMs` of waiting for them. Returns why the transfer counts as stalled when a
   * window has passed below the limit, else undefined.
   */
  arrived(bytes: number, waitedMs: number): string | undefined {
    this.waitedMs += Math.max(0, waitedMs);
    this.bytes += bytes;
    if (this.waitedMs < this.windowMs) return undefined;
    // A window without a byte is silence, which each caller's silence timeout tells as such.
    const slow = this.bytes > 0 && (this.bytes * 1000) / this.waitedMs < this.bytesPerSecond;
    const seconds = Math.round(this.waitedMs / 100) / 10;
    const got = this.bytes;
    this.waitedMs = 0;
    this.bytes = 0;
    return slow
      ? `only ${formatBytes(got)} in ${seconds} s, under ${formatBytes(this.bytesPerSecond)}/s (stalled)`
      : undefined;
  }
}

/**
 * The chunks of `source` as they come, ended with `stalled(reason)` thrown (the source is closed) once a
 * window brings less than the limit.
 */
export async function* withLowSpeedLimit<T extends { length: number }>(
  source: AsyncIterable<T>,
  windowMs: number,
  stalled: (reason: string) => Error,
): AsyncGenerator<T, void, undefined> {
  const limit = new LowSpeedLimit(windowMs);
  const chunks = source[Symbol.asyncIterator]();
  let finished = false;
  try {
    for (;;) {
      const asked = performance.now();
      const next = await chunks.next();
      if (next.done) {
        finished = true;
        return;
      }
      const slow = limit.arrived(next.value.length, performance.now() - asked);
      if (slow) throw stalled(slow);
      yield next.value;
    }
  } finally {
    if (!finished) await chunks.return?.();
  }
}
