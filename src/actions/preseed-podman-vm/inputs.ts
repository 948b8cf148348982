import {
  InputError,
  readBoolean,
  readEnum,
  readInteger,
  readString,
  type InputSource,
} from '../../core/inputs.js';

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

function readOptionalPositive(src: InputSource, name: string): number | undefined {
  return src.get(name) === undefined ? undefined : readInteger(src, name, 0, { min: 1 });
}

export function readInputs(src: InputSource): PreseedInputs {
  const init = readBoolean(src, 'init', false);
  const start = readBoolean(src, 'start', false);
  if (start && !init) throw new InputError('start', 'needs `init: true` (there is no machine to start).');
  const cacheScope = readEnum(src, 'cache-scope', CACHE_SCOPES, 'image');
  if (cacheScope === 'machine' && !init) {
    throw new InputError('cache-scope', '`machine` needs `init: true` (there is no machine to cache).');
  }
  return {
    image: readString(src, 'image'),
    vmType: readEnum(src, 'vm-type', VM_TYPES, 'auto'),
    arch: readEnum(src, 'arch', ARCHES, 'auto'),
    cache: readBoolean(src, 'cache', true),
    cacheKeyPrefix: readString(src, 'cache-key-prefix') ?? 'podman-machine-os',
    cacheScope,
    setDefault: readBoolean(src, 'set-default', true),
    init,
    machineName: readString(src, 'machine-name') ?? 'podman-machine-default',
    cpus: readOptionalPositive(src, 'cpus'),
    memoryMiB: readOptionalPositive(src, 'memory'),
    diskSizeGiB: readOptionalPositive(src, 'disk-size'),
    rootful: readBoolean(src, 'rootful', false),
    start,
    cleanup: readBoolean(src, 'cleanup', true),
  };
}
