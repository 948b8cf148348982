import type { Host } from '../../core/host.js';
import { removeScratchDirs } from '../../core/workspace.js';
import { cleanupFinished } from './interrupt.js';
import { localMode } from './local-mode.js';
import { sshMode } from './ssh-mode.js';
import { loadRunState } from './state.js';

export async function post(host: Host): Promise<void> {
  try {
    const state = loadRunState(host);
    if (!state) {
      // main may have failed right after making its first dir, before it recorded anything of its own.
      await removeScratchDirs(host);
      return;
    }
    if (state.mode === 'ssh') await sshMode.stop(host, state);
    else await localMode.stop(host, state);
  } finally {
    cleanupFinished();
  }
}
