/**
 * Podman's overlay driver bind-mounts `<root>/overlay` onto itself (and mounts container layers below it), so a
 * private `--root` cannot simply be deleted: `rm -r` fails with EBUSY while those mounts exist. Rootless podman
 * mounts inside its user namespace's own mount namespace, where they outlive the service too, unseen from here.
 * Linux only.
 */
import { readFile } from 'node:fs/promises';
import { resolve, sep } from 'node:path';
import { exec } from '../../core/exec.js';
import { execAsStorageRoot } from '../../core/podman.js';

/** Decodes the octal escapes (`\040` for a space) the kernel uses in mountinfo paths. */
function decodeMountPath(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/** Mount points at or below `dir`, deepest first (the order they must be unmounted in). */
export function mountPointsUnder(mountinfo: string, dir: string): string[] {
  const root = resolve(dir);
  const points = new Set<string>();
  for (const line of mountinfo.split('\n')) {
    const field = line.split(' ')[4];
    if (!field) continue;
    const point = decodeMountPath(field);
    if (point === root || point.startsWith(root + sep)) points.add(point);
  }
  return [...points].sort((a, b) => b.length - a.length);
}

/**
 * Unmounts everything mounted below `dir`; returns what it could not unmount. `inStorageNamespace`: in rootless
 * podman's namespace (execAsStorageRoot) instead of this process's.
 */
export async function unmountUnder(
  dir: string,
  timeoutMs = 10_000,
  inStorageNamespace = false,
): Promise<string[]> {
  const run = inStorageNamespace ? execAsStorageRoot : exec;
  // Mounts can be stacked on one point; each pass peels one layer. Three passes cover what podman does.
  for (let pass = 0; ; pass++) {
    let mountinfo: string;
    try {
      mountinfo = inStorageNamespace
        ? (await execAsStorageRoot('cat', ['/proc/self/mountinfo'], { timeoutMs })).stdout
        : await readFile('/proc/self/mountinfo', 'utf8');
    } catch {
      return []; // not Linux: nothing podman-mounted to undo
    }
    const remaining = mountPointsUnder(mountinfo, dir);
    if (remaining.length === 0 || pass === 3) return remaining;
    for (const point of remaining) {
      // A busy mount must not block the rest of the cleanup: lazy unmount detaches it now, frees it when idle.
      await run('umount', ['--lazy', point], { timeoutMs, allowFailure: true }).catch(() => undefined);
    }
  }
}
