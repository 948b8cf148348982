/**
 * The CLI runs main and post in one process and holds the service up until it is told to stop. A signal must
 * never end that process before post has cleaned up: the first SIGINT, SIGTERM or SIGHUP aborts whatever main is
 * doing (startup included, at its next step) and lets post run; any later one only says that cleanup is under
 * way, and once post has finished it is ignored: the process exits right after post, and a signal in between
 * must not turn a clean exit into a kill. So the handlers are never removed.
 */
import type { Host } from '../../core/host.js';
import { ActionError } from '../../core/run.js';

const SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

let trapped: { controller: AbortController; cleanedUp: boolean } | undefined;

/** Installs the handlers; the returned signal aborts (with an ActionError as reason) on the first signal. */
export function trapSignals(host: Host): AbortSignal {
  if (trapped) return trapped.controller.signal;
  const controller = new AbortController();
  const trap = { controller, cleanedUp: false };
  const onSignal = (name: NodeJS.Signals) => {
    if (trap.cleanedUp) return;
    if (controller.signal.aborted) {
      host.info(`${name}: still cleaning up; this ends by itself once everything is stopped and removed.`);
      return;
    }
    host.info(`${name}: stopping and cleaning up ...`);
    controller.abort(new ActionError(`interrupted by ${name} before it was ready`));
  };
  for (const name of SIGNALS) process.on(name, onSignal);
  trapped = trap;
  return controller.signal;
}

/** Called when post has finished: signals from now on are ignored while the process exits. */
export function cleanupFinished(): void {
  if (trapped) trapped.cleanedUp = true;
}

export async function holdUntilInterrupted(host: Host, interrupted: AbortSignal): Promise<void> {
  host.info('Ready. Press Ctrl-C (or send SIGTERM) to stop and clean up.');
  if (interrupted.aborted) return;
  await new Promise<void>((resolve) => {
    // Signal listeners do not keep node alive, and the service child is unref'd: without a timer node would
    // find nothing left to wait for and exit (code 13) without running post.
    const keepAlive = setInterval(() => undefined, 1 << 30);
    interrupted.addEventListener(
      'abort',
      () => {
        clearInterval(keepAlive);
        resolve();
      },
      { once: true },
    );
  });
}
