import { describe, expect, it } from '@jest/globals';
import { parsePodmanVersion } from '../../src/core/podman.js';
import { initArgs } from '../../src/actions/preseed-podman-vm/machine-init.js';

describe('podman machine init command line', () => {
  const base = { name: 'ci-vm', imagePath: '/t/ici-pvm/machine-os.qcow2.zst', rootful: false };

  it('uses --image-path for podman 4', () => {
    expect(initArgs(parsePodmanVersion('4.9.4')!, base)).toEqual([
      'machine',
      'init',
      '--image-path',
      '/t/ici-pvm/machine-os.qcow2.zst',
      'ci-vm',
    ]);
  });

  it('uses --image for podman 5 with cpus, memory, disk size and rootful', () => {
    const args = initArgs(parsePodmanVersion('5.2.1')!, {
      ...base,
      cpus: 4,
      memoryMiB: 4096,
      diskSizeGiB: 40,
      rootful: true,
    });
    expect(args).toEqual([
      'machine',
      'init',
      '--image',
      '/t/ici-pvm/machine-os.qcow2.zst',
      '--cpus',
      '4',
      '--memory',
      '4096',
      '--disk-size',
      '40',
      '--rootful',
      'ci-vm',
    ]);
  });
});
