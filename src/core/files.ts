import { stat } from 'node:fs/promises';

/** Whether anything (file, dir, socket) exists at `path`; unreadable parents count as absent. */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
