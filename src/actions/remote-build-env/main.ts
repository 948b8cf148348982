import type { Host } from '../../core/host.js';
import type { RemoteBuildInputs } from './inputs.js';
import { holdUntilInterrupted, trapSignals } from './interrupt.js';
import { localMode } from './local-mode.js';
import { sshMode } from './ssh-mode.js';

/**
 * The CLI runs main and post in one process, so returning would stop the service at once. There the service
 * stays up until the user interrupts, and post then cleans up as it does on a runner.
 */
export async function main(host: Host, inputs: RemoteBuildInputs): Promise<void> {
  const interrupted = host.kind === 'cli' ? trapSignals(host) : undefined;
  if (inputs.mode === 'ssh') await sshMode.start(host, inputs, interrupted);
  else await localMode.start(host, inputs, interrupted);
  if (interrupted) await holdUntilInterrupted(host, interrupted);
}
