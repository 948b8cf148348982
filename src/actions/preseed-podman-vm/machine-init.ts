/** The `podman machine` command lines this action runs: init with the local image, start, and cleanup. */
import type { PodmanVersion } from '../../core/podman.js';

export interface InitOptions {
  name: string;
  imagePath: string;
  cpus?: number;
  memoryMiB?: number;
  diskSizeGiB?: number;
  rootful: boolean;
}

/** Podman 4 takes the image as `--image-path`; podman 5 renamed it `--image`. */
export function initArgs(version: PodmanVersion, o: InitOptions): string[] {
  const args = ['machine', 'init', version.major >= 5 ? '--image' : '--image-path', o.imagePath];
  if (o.cpus !== undefined) args.push('--cpus', String(o.cpus));
  if (o.memoryMiB !== undefined) args.push('--memory', String(o.memoryMiB));
  if (o.diskSizeGiB !== undefined) args.push('--disk-size', String(o.diskSizeGiB));
  if (o.rootful) args.push('--rootful');
  args.push(o.name);
  return args;
}

export function startArgs(name: string): string[] {
  return ['machine', 'start', name];
}

export function stopArgs(name: string): string[] {
  return ['machine', 'stop', name];
}

export function removeArgs(name: string): string[] {
  return ['machine', 'rm', '--force', name];
}
