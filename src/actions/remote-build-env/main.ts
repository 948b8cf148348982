import type { Host } from '../../core/host.js';
import type { RemoteBuildInputs } from './inputs.js';
import { startLocalService } from './local-mode.js';
import { connectSsh } from './ssh-mode.js';

/**
 * The CLI runs main and post in one process, so returning would stop the service at once. There the service
 * stays up until the user interrupts, and post then cleans up as it does on a runner.
 */
async function holdUntilInterrupted(host: Host): Promise<void> {
  host.info('Ready. Press Ctrl-C (or send SIGTERM) to stop and clean up.');
  await new Promise<void>((resolve) => {
    // Signal listeners do not keep node alive, and the service child is unref'd: without a timer node would
    // find nothing left to wait for and exit (code 13) without running post.
    const keepAlive = setInterval(() => undefined, 1 << 30);
    const done = () => {
      clearInterval(keepAlive);
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      resolve();
    };
    process.on('SIGINT', done);
    process.on('SIGTERM', done);
  });
}

export async function runRemoteBuildEnv(host: Host, inputs: RemoteBuildInputs): Promise<void> {
  if (inputs.mode === 'ssh') await connectSsh(host, inputs);
  else await startLocalService(host, inputs);
  if (host.kind === 'cli') await holdUntilInterrupted(host);
}
