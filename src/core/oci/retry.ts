/**
 * The one retry policy of the registry client. Every operation (a manifest PUT, a blob upload, a download, a
 * token fetch) gets one RetryBudget; whichever layer restarts it — the transport after a 503, the upload after a
 * dropped PATCH, the download after a cut connection — draws from that budget, so an operation is tried at
 * most `retries + 1` times in total and retries never multiply across layers.
 */
import { sleep } from '../process.js';
import { formatSeconds } from '../summary.js';
import { RegistryError } from './errors.js';

export interface RetryPolicy {
  /** Tries after the first one. */
  retries: number;
  baseDelayMs: number;
  /** Cap of the exponential backoff. */
  maxDelayMs: number;
  /** A server's Retry-After is honoured up to this. */
  maxRetryAfterMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = {
  retries: 5,
  baseDelayMs: 250,
  maxDelayMs: 15_000,
  maxRetryAfterMs: 120_000,
};

/** Status codes worth another try: rate limiting and transient server trouble (501 is a permanent "no"). */
export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 429 || (status >= 500 && status !== 501 && status !== 505);
}

/**
 * Retry-After as seconds (a fraction too, as some servers send it) or an HTTP date; undefined when absent or
 * unparseable. Only the HTTP-date forms are read as dates (all three start with the day's name): Date.parse
 * also takes '1.5', '-1' or '5, 5' (a header sent twice, joined) for days in 2001, a wait of 0 that made every
 * retry against a rate-limiting registry go at once.
 */
export function parseRetryAfter(value: string | undefined | null, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+(?:\.\d+)?$/.test(trimmed)) return Math.ceil(Number(trimmed) * 1000);
  if (!/^[a-z]{3}/i.test(trimmed)) return undefined;
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

export function backoffDelay(attempt: number, policy: RetryPolicy, retryAfterMs?: number): number {
  // The server knows its own load better than our schedule does; a cap only guards against absurd values.
  if (retryAfterMs !== undefined) return Math.min(retryAfterMs, policy.maxRetryAfterMs);
  const exponential = policy.baseDelayMs * 2 ** attempt;
  // Jitter keeps parallel uploads that failed together from retrying in lockstep.
  return Math.min(policy.maxDelayMs, exponential / 2 + Math.random() * (exponential / 2));
}

/** A failure worth another try: network trouble, a stall, 429/5xx, or a token the registry stopped accepting. */
export class TransientError extends RegistryError {
  /** Tried as often as the policy allows already (e.g. a shared token fetch): nobody retries it again. */
  exhausted = false;
  /** No answer within the wait: the registry may be slow rather than down, still working on the request. */
  unanswered = false;

  constructor(
    message: string,
    status?: number,
    /** The server's Retry-After. */
    readonly retryAfterMs?: number,
  ) {
    super(message, status);
    this.name = 'TransientError';
  }
}

export class RetryBudget {
  private tries = 1;
  private refused = false;

  constructor(
    private readonly policy: RetryPolicy,
    /**
     * Told each retry and how long it waits first: counted for the per-registry log line and the job summary,
     * and told in the log when the server set the wait (serverWait).
     */
    private readonly onRetry: (error: TransientError, waitMs: number) => void,
  ) {}

  /** Failed tries so far that were followed by another: one of them may have been applied, its answer lost. */
  get retried(): number {
    return this.tries - 1;
  }

  /**
   * Every try of this operation failed without a usable answer: this budget refused the next one (not a
   * failure that came exhausted from elsewhere, such as a shared token fetch).
   */
  get spent(): boolean {
    return this.refused;
  }

  /**
   * Called after a failed try: waits before the next one, or rethrows the failure when the budget is spent
   * (the thrown error is then marked exhausted, so an enclosing operation does not start its own round).
   */
  async next(error: TransientError): Promise<void> {
    if (error.exhausted) throw error;
    if (this.tries > this.policy.retries) {
      this.refused = true;
      error.exhausted = true;
      throw error;
    }
    const wait = backoffDelay(this.tries - 1, this.policy, error.retryAfterMs);
    this.tries++;
    this.onRetry(error, wait);
    await sleep(wait);
  }
}

/**
 * The log line for a retry whose wait the server set (Retry-After), else undefined: a rate-limited registry can
 * hold an operation for minutes with nothing moving (6 tries, up to 120 s before each), and the log says why.
 * `error` has its server text neutralised already (failureMessage).
 */
export function serverWait(error: TransientError, waitMs: number): string | undefined {
  // 0 is no wait to explain (a Retry-After: 0, or the upload's restart after a 401 asked for new credentials).
  if (!error.retryAfterMs) return undefined;
  const asked =
    error.retryAfterMs > waitMs
      ? ` (it asked for ${formatSeconds(error.retryAfterMs)}, more than the cap)`
      : '';
  return `${error.message}; waiting ${formatSeconds(waitMs)} as the registry asked (Retry-After)${asked}.`;
}
