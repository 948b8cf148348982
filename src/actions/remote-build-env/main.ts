import type { Host } from '../../core/host.js';
import type { RemoteBuildInputs } from './inputs.js';
import { holdUntilInterrupted, trapSignals } from './interrupt.js';
import { startLocalService } from './local-mode.js';
import { connectSsh } from './ssh-mode.js';

/**
 * The CLI runs main and post in one process, so returning would stop the service at once. There the service
 * stays up until the user interrupts, and post then cleans up as it does on a runner.
 */
export async function runRemoteBuildEnv(host: Host, inputs: RemoteBuildInputs): Promise<void> {
  const interrupted = host.kind === 'cli' ? trapSignals(host) : undefined;
  if (inputs.mode === 'ssh') await connectSsh(host, inputs, interrupted);
  else await startLocalService(host, inputs, interrupted);
  if (interrupted) await holdUntilInterrupted(host, interrupted);
}
