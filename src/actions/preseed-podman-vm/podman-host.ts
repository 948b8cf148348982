/**
 * What the installed podman and this host imply for the machine image, given podman's version (core/podman.ts;
 * the default image tag and the init flag names depend on it): the machine provider, the machine architecture, and where podman keeps
 * machine files.
 */
import { join } from 'node:path';
import { InputError } from '../../core/inputs.js';
import type { PodmanVersion } from '../../core/podman.js';
import { Inputs } from './constants.js';
import type { ArchInput, VmTypeInput } from './inputs.js';

export type VmType = Exclude<VmTypeInput, 'auto'>;
export type MachineArch = Exclude<ArchInput, 'auto'>;

/** Podman's own choice of provider; main runs podman with it set, and post with the same value. */
export const PROVIDER_ENV = 'CONTAINERS_MACHINE_PROVIDER';
const KNOWN_VM_TYPES: readonly VmType[] = ['qemu', 'applehv', 'libkrun', 'hyperv', 'wsl'];

/**
 * The provider podman itself would pick: CONTAINERS_MACHINE_PROVIDER when set, otherwise the platform default
 * (podman 4 used qemu on macOS; podman 5 uses applehv there and wsl on Windows).
 */
export function defaultVmType(
  version: PodmanVersion,
  platform: NodeJS.Platform = process.platform,
  env: NodeJS.ProcessEnv = process.env,
): VmType {
  const fromEnv = env[PROVIDER_ENV]?.trim().toLowerCase();
  if (fromEnv) {
    const match = KNOWN_VM_TYPES.find((t) => t === fromEnv);
    if (!match) {
      throw new InputError(
        PROVIDER_ENV,
        `'${fromEnv}' is not a podman machine provider (${KNOWN_VM_TYPES.join(', ')}); ` +
          `unset it or set the input \`${Inputs.vmType}\`.`,
        'environment',
      );
    }
    return match;
  }
  if (platform === 'darwin') return version.major >= 5 ? 'applehv' : 'qemu';
  if (platform === 'win32') return 'wsl';
  return 'qemu';
}

export function resolveVmType(input: VmTypeInput, version: PodmanVersion): VmType {
  return input === 'auto' ? defaultVmType(version) : input;
}

/** Podman names machine architectures the way the machine-os index does. */
const MACHINE_ARCH: ReadonlyMap<string, MachineArch> = new Map([
  ['x64', 'x86_64'],
  ['arm64', 'aarch64'],
]);

export function hostMachineArch(nodeArch: string = process.arch): MachineArch {
  const arch = MACHINE_ARCH.get(nodeArch);
  if (arch) return arch;
  throw new InputError(
    Inputs.arch,
    `podman machine has no image for this host's architecture (${nodeArch}); set \`${Inputs.arch}\` to ` +
      'x86_64 or aarch64 to fetch one of those without `init`.',
  );
}

/** Whether podman on this host inits machines of `arch` (on a host of no machine arch, of none). */
export function isHostArch(arch: MachineArch, nodeArch: string = process.arch): boolean {
  return MACHINE_ARCH.get(nodeArch) === arch;
}

/**
 * An explicit arch other than the host's is fine for prefetching, but a machine of another arch cannot be
 * initialised here: podman always picks the host's arch.
 */
export function resolveArch(input: ArchInput, init: boolean, nodeArch: string = process.arch): MachineArch {
  if (input === 'auto') return hostMachineArch(nodeArch);
  if (init && input !== hostMachineArch(nodeArch)) {
    throw new InputError(
      Inputs.arch,
      `is ${input} but this host is ${hostMachineArch(nodeArch)}; podman can only init a machine of the host's arch (drop \`init\` or \`arch\`).`,
    );
  }
  return input;
}

export interface MachineDirs {
  /** `$XDG_DATA_HOME/containers/podman/machine/<vmtype>`: disks and podman's image cache. */
  data: string;
  /** Podman 5's image cache: `<data>/cache`. */
  imageCache: string;
  /** `$XDG_CONFIG_HOME/containers/podman/machine/<vmtype>`: NAME.json and NAME.ign. */
  config: string;
}

/** Podman uses the XDG base dirs (falling back to ~/.local/share and ~/.config) on every platform. */
export function machineDirs(vmType: VmType, env: NodeJS.ProcessEnv = process.env): MachineDirs {
  const home = env.HOME ?? env.USERPROFILE ?? '';
  const dataHome = env.XDG_DATA_HOME || join(home, '.local', 'share');
  const configHome = env.XDG_CONFIG_HOME || join(home, '.config');
  const data = join(dataHome, 'containers', 'podman', 'machine', vmType);
  return {
    data,
    imageCache: join(data, 'cache'),
    config: join(configHome, 'containers', 'podman', 'machine', vmType),
  };
}
