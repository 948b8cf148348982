/**
 * "Does the API answer on this socket?", asked over HTTP from this process as podman's own client asks first
 * (GET /_ping). Not a `podman --url … info` child: a child of main outlives a killed main, holding a connection.
 */
import { request } from 'node:http';
import { readFile } from 'node:fs/promises';
import { pathExists } from '../../core/files.js';
import { sleep } from '../../core/process.js';
import { ActionError, errorMessage } from '../../core/run.js';
import type { TrackedChild } from './tracked.js';

/** What the service may claim as its version before we print it. */
const VERSION = /^[0-9][0-9A-Za-z.+~-]{0,39}$/;
const POLL_MS = 100;
/** One ping may hang on a half-started service or a stalled link; bound it so the overall timeout holds. */
const PING_TIMEOUT_MS = 10_000;

/** Resolves with the libpod API version the service announces ('unknown' for other engines). */
export function pingService(socket: string, timeoutMs: number, signal?: AbortSignal): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(
      { socketPath: socket, path: '/_ping', method: 'GET', agent: false, timeout: timeoutMs, signal },
      (res) => {
        const version = res.headers['libpod-api-version'];
        const status = res.statusCode;
        res.destroy(); // the body ("OK") is not needed
        if (status !== 200) reject(new Error(`GET /_ping answered HTTP ${status}`));
        else resolve(typeof version === 'string' && VERSION.test(version) ? version : 'unknown');
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

export async function logTail(logFile: string, lines = 20): Promise<string> {
  try {
    return (await readFile(logFile, 'utf8')).trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

export interface AnswerWait {
  /** What serves the socket, for messages: `podman system service`, `ssh`. */
  what: string;
  socket: string;
  child: TrackedChild;
  logFile: string;
  timeoutMs: number;
  /** The CLI's interrupt: ends the wait with its reason. */
  interrupted?: AbortSignal;
  /** What to try when nothing answered in time. */
  advice: string;
}

/** Waits until the socket answers; returns the version announced. Fails early when the child exits. */
export async function waitUntilAnswering(wait: AnswerWait): Promise<string> {
  const deadline = Date.now() + wait.timeoutMs;
  let exitCode: number | undefined;
  void wait.child.exited.then((code) => (exitCode = code));
  let lastProblem = 'the socket never appeared';
  for (;;) {
    wait.interrupted?.throwIfAborted();
    if (exitCode !== undefined) {
      throw new ActionError(
        `${wait.what} exited with code ${exitCode} before it answered. Its log ends with:\n${await logTail(wait.logFile)}`,
      );
    }
    if (await pathExists(wait.socket)) {
      const timeoutMs = Math.min(Math.max(1000, deadline - Date.now()), PING_TIMEOUT_MS);
      try {
        return await pingService(wait.socket, timeoutMs, wait.interrupted);
      } catch (error) {
        wait.interrupted?.throwIfAborted();
        lastProblem = errorMessage(error);
      }
    }
    if (Date.now() >= deadline) {
      throw new ActionError(
        `nothing answered on ${wait.socket} within ${Math.round(wait.timeoutMs / 1000)} s (${lastProblem}); ` +
          `${wait.advice} The log of ${wait.what} ends with:\n${await logTail(wait.logFile)}`,
      );
    }
    await sleep(POLL_MS);
  }
}
