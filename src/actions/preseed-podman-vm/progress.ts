import type { Host } from '../../core/host.js';
import { formatBytes, formatDuration } from '../../core/summary.js';

/**
 * A progress line every few seconds for long downloads, so a 1 GiB pull does not look like a hang; the interval
 * is judged on each update, so nothing keeps running after the download ends.
 */
export class ProgressLog {
  private readonly started = Date.now();
  private lastLogged = Date.now();

  constructor(
    private readonly host: Host,
    private readonly label: string,
    private readonly totalBytes: number | undefined,
    private readonly intervalMs = 5000,
  ) {}

  update(bytes: number): void {
    const now = Date.now();
    if (now - this.lastLogged < this.intervalMs) return;
    this.lastLogged = now;
    this.host.info(this.line(bytes));
  }

  done(bytes: number): void {
    this.host.info(`${this.line(bytes)}, done in ${formatDuration(Date.now() - this.started)}`);
  }

  private line(bytes: number): string {
    const seconds = Math.max((Date.now() - this.started) / 1000, 0.001);
    const rate = `${formatBytes(Math.round(bytes / seconds))}/s`;
    const of = this.totalBytes
      ? ` of ${formatBytes(this.totalBytes)} (${Math.floor((bytes / this.totalBytes) * 100)}%)`
      : '';
    return `${this.label}: ${formatBytes(bytes)}${of} at ${rate}`;
  }
}
