import { cacheKeyPrefix, readCacheKeyInput } from '../../core/cache-key.js';
import {
  InputError,
  readBoolean,
  readEnum,
  readInteger,
  readString,
  type InputSource,
} from '../../core/inputs.js';
import { Inputs } from './constants.js';

export const VM_TYPES = ['auto', 'qemu', 'applehv', 'libkrun', 'hyperv', 'wsl'] as const;
export type VmTypeInput = (typeof VM_TYPES)[number];
export const ARCHES = ['auto', 'x86_64', 'aarch64'] as const;
export type ArchInput = (typeof ARCHES)[number];
export const CACHE_SCOPES = ['image', 'machine'] as const;

export interface PreseedInputs {
  image?: string;
  vmType: VmTypeInput;
  arch: ArchInput;
  cache: boolean;
  cacheKeyPrefix: string;
  cacheScope: (typeof CACHE_SCOPES)[number];
  setDefault: boolean;
  init: boolean;
  machineName: string;
  cpus?: number;
  memoryMiB?: number;
  diskSizeGiB?: number;
  rootful: boolean;
  start: boolean;
  cleanup: boolean;
}

/**
 * What podman accepts as a machine name: pkg/machine/define `NameRegex` (as for containers) and at most 30
 * characters (cmd/podman/machine/init.go). Checked before the name reaches an argv: a name starting with `-`
 * would be read as an option (`--now` starts a machine, `--rootful` changes it).
 */
const MACHINE_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
const MAX_MACHINE_NAME = 30;

export function isMachineName(name: string): boolean {
  return name.length <= MAX_MACHINE_NAME && MACHINE_NAME.test(name);
}

function readMachineName(src: InputSource): string {
  const name = readString(src, Inputs.machineName, 'podman-machine-default');
  if (!isMachineName(name)) {
    throw new InputError(
      Inputs.machineName,
      `${JSON.stringify(name.slice(0, 64))} is not a name podman accepts: a letter or digit, then letters, digits, '_', '.' or '-', at most ${MAX_MACHINE_NAME} characters.`,
    );
  }
  return name;
}

/**
 * Bounds of a machine resource: above 2^53 a number is no longer the digits given, and from 10^21 on it prints
 * as `1e+21`, which podman's argv (and the machine cache key) would get instead.
 */
const RESOURCE = { min: 1, max: Number.MAX_SAFE_INTEGER };

/**
 * The longest key main builds from the prefix: the image's, `<prefix>-<os>-<machine arch>-<12 hex of the
 * inputs>-<64 hex of the digest>` (main.ts: cacheKeyBase, then the digest).
 */
function longestCacheKey(prefix: string): string {
  return `${cacheKeyPrefix({ prefix, arch: 'aarch64' })}${'0'.repeat(12)}-${'0'.repeat(64)}`;
}

export function readInputs(src: InputSource): PreseedInputs {
  const init = readBoolean(src, Inputs.init, false);
  const start = readBoolean(src, Inputs.start, false);
  if (start && !init)
    throw new InputError(Inputs.start, 'needs `init: true` (there is no machine to start).');
  const cacheScope = readEnum(src, Inputs.cacheScope, CACHE_SCOPES, 'image');
  if (cacheScope === 'machine' && !init) {
    throw new InputError(Inputs.cacheScope, '`machine` needs `init: true` (there is no machine to cache).');
  }
  return {
    image: readString(src, Inputs.image),
    vmType: readEnum(src, Inputs.vmType, VM_TYPES, 'auto'),
    arch: readEnum(src, Inputs.arch, ARCHES, 'auto'),
    cache: readBoolean(src, Inputs.cache, true),
    cacheKeyPrefix: readCacheKeyInput(src, Inputs.cacheKeyPrefix, 'podman-machine-os', longestCacheKey),
    cacheScope,
    setDefault: readBoolean(src, Inputs.setDefault, true),
    init,
    machineName: readMachineName(src),
    cpus: readInteger(src, Inputs.cpus, undefined, RESOURCE),
    memoryMiB: readInteger(src, Inputs.memory, undefined, RESOURCE),
    diskSizeGiB: readInteger(src, Inputs.diskSize, undefined, RESOURCE),
    rootful: readBoolean(src, Inputs.rootful, false),
    start,
    cleanup: readBoolean(src, Inputs.cleanup, true),
  };
}
