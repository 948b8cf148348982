import { removeIsolatedAuth } from './auth-files.js';
import type { Host } from '../../core/host.js';
import { removeScratchDirs } from '../../core/workspace.js';

/** Removes the auth dir and exports again, in case main failed or was cancelled before its own cleanup. */
export async function pushMultiTagPost(host: Host): Promise<void> {
  const authDir = await removeIsolatedAuth(host);
  if (authDir) host.info(`Removed credentials ${authDir}`);
  await removeScratchDirs(host);
}
