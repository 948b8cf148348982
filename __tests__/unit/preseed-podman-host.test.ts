import { describe, expect, it } from '@jest/globals';
import { InputError } from '../../src/core/inputs.js';
import { parsePodmanVersion } from '../../src/core/podman.js';
import { defaultVmType, machineDirs, resolveArch } from '../../src/actions/preseed-podman-vm/podman-host.js';

const v = (text: string) => parsePodmanVersion(text)!;

describe('vm type detection', () => {
  it('follows the platform and podman major version', () => {
    expect(defaultVmType(v('5.2.0'), 'linux', {})).toBe('qemu');
    expect(defaultVmType(v('5.2.0'), 'darwin', {})).toBe('applehv');
    expect(defaultVmType(v('4.9.0'), 'darwin', {})).toBe('qemu');
    expect(defaultVmType(v('5.2.0'), 'win32', {})).toBe('wsl');
  });

  it('honours CONTAINERS_MACHINE_PROVIDER as podman does, and rejects unknown providers', () => {
    expect(defaultVmType(v('5.2.0'), 'darwin', { CONTAINERS_MACHINE_PROVIDER: 'libkrun' })).toBe('libkrun');
    expect(() => defaultVmType(v('5.2.0'), 'linux', { CONTAINERS_MACHINE_PROVIDER: 'vbox' })).toThrow(
      InputError,
    );
  });
});

describe('arch', () => {
  it('maps node arches to machine-os arches', () => {
    expect(resolveArch('auto', false, 'x64')).toBe('x86_64');
    expect(resolveArch('auto', false, 'arm64')).toBe('aarch64');
  });

  it('allows prefetching another arch but refuses to init one', () => {
    expect(resolveArch('aarch64', false, 'x64')).toBe('aarch64');
    expect(() => resolveArch('aarch64', true, 'x64')).toThrow(/host is x86_64/);
  });
});

describe('machine dirs', () => {
  it('uses XDG dirs when set and ~/.local/share, ~/.config otherwise', () => {
    expect(machineDirs('qemu', { HOME: '/h' })).toEqual({
      data: '/h/.local/share/containers/podman/machine/qemu',
      imageCache: '/h/.local/share/containers/podman/machine/qemu/cache',
      config: '/h/.config/containers/podman/machine/qemu',
    });
    expect(machineDirs('applehv', { HOME: '/h', XDG_DATA_HOME: '/d', XDG_CONFIG_HOME: '/c' })).toEqual({
      data: '/d/containers/podman/machine/applehv',
      imageCache: '/d/containers/podman/machine/applehv/cache',
      config: '/c/containers/podman/machine/applehv',
    });
  });
});
