/** Process checks for tests that end children and want to see them gone. */
import { readFileSync } from 'node:fs';

/** Alive and not a zombie (an orphan this container's pid 1 never reaps stays one). */
export function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^[ZX]$/.test(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0]!);
  } catch {
    return false;
  }
}
