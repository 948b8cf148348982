import { describe, expect, it } from '@jest/globals';
import type { Descriptor } from '../../src/core/oci/media-types.js';
import { parsePodmanVersion } from '../../src/core/podman.js';
import {
  defaultImage,
  diskLayer,
  podmanCacheFileName,
  selectDiskChild,
  type ImageIndex,
} from '../../src/actions/preseed-podman-vm/machine-os.js';

const d = (n: number) => `sha256:${n.toString(16).padStart(64, '0')}`;

function disk(n: number, architecture: string, disktype: string): Descriptor {
  return {
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    digest: d(n),
    size: 500,
    platform: { os: 'linux', architecture },
    annotations: { disktype },
  };
}

/** Shaped like quay.io/podman/machine-os:5.x: container children first, then arch x disktype disks. */
const index: ImageIndex = {
  mediaType: 'application/vnd.oci.image.index.v1+json',
  manifests: [
    {
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: d(1),
      size: 900,
      platform: { os: 'linux', architecture: 'amd64' },
    },
    {
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: d(2),
      size: 900,
      platform: { os: 'linux', architecture: 'arm64' },
    },
    disk(10, 'x86_64', 'qemu'),
    disk(11, 'x86_64', 'applehv'),
    disk(12, 'x86_64', 'hyperv'),
    disk(20, 'aarch64', 'qemu'),
    disk(21, 'aarch64', 'applehv'),
  ],
};

describe('default machine image', () => {
  it('podman 5: the machine-os index of podman major.minor, the WSL repository for wsl', () => {
    const v = parsePodmanVersion('5.3.2')!;
    expect(defaultImage(v, 'qemu')).toBe('docker://quay.io/podman/machine-os:5.3');
    expect(defaultImage(v, 'applehv')).toBe('docker://quay.io/podman/machine-os:5.3');
    expect(defaultImage(v, 'wsl')).toBe('docker://quay.io/podman/machine-os-wsl:5.3');
    expect(defaultImage(parsePodmanVersion('5.4.0-dev')!, 'qemu')).toBe(
      'docker://quay.io/podman/machine-os:5.4',
    );
  });

  it('podman 4 (Ubuntu 24.04 has 4.9): the Fedora CoreOS testing stream, never machine-os:4.x', () => {
    for (const text of ['4.9.3', '4.3.1', '4.0.0']) {
      expect(defaultImage(parsePodmanVersion(text)!, 'qemu')).toBe('testing');
    }
  });
});

describe('disk child selection', () => {
  it('picks the child for arch and disk type, never a container child', () => {
    expect(selectDiskChild(index, 'x86_64', 'qemu').digest).toBe(d(10));
    expect(selectDiskChild(index, 'aarch64', 'qemu').digest).toBe(d(20));
    expect(selectDiskChild(index, 'x86_64', 'hyperv').digest).toBe(d(12));
  });

  it('uses the applehv disk for libkrun', () => {
    expect(selectDiskChild(index, 'aarch64', 'libkrun').digest).toBe(d(21));
  });

  it('says what the index offers when nothing matches', () => {
    expect(() => selectDiskChild(index, 'aarch64', 'hyperv')).toThrow(
      /no aarch64 disk of type hyperv; it offers x86_64\/qemu, x86_64\/applehv, x86_64\/hyperv, aarch64\/qemu, aarch64\/applehv/,
    );
  });
});

describe('podman cache file name', () => {
  it('is the disk MANIFEST digest hex plus the provider kind and compression', () => {
    expect(podmanCacheFileName(d(10), 'qemu')).toBe(`${'0'.repeat(62)}0a.qcow2.zst`);
    expect(podmanCacheFileName(d(11), 'applehv')).toMatch(/0b\.raw\.zst$/);
    expect(podmanCacheFileName(d(11), 'libkrun')).toMatch(/0b\.raw\.zst$/);
    expect(podmanCacheFileName(d(12), 'hyperv')).toMatch(/0c\.vhdx\.zst$/);
    expect(() => podmanCacheFileName('sha512:abc', 'qemu')).toThrow(/not a sha256 digest/);
  });
});

describe('disk layer', () => {
  const layer = {
    mediaType: 'application/zstd',
    digest: d(99),
    size: 123,
    annotations: { 'org.opencontainers.image.title': 'fedora-coreos-41-qemu.x86_64.qcow2.zst' },
  };
  const config = { mediaType: 'application/vnd.oci.empty.v1+json', digest: d(3), size: 2 };

  it('returns the single layer and its original file name', () => {
    expect(diskLayer({ config, layers: [layer] })).toEqual({
      layer,
      title: 'fedora-coreos-41-qemu.x86_64.qcow2.zst',
    });
  });

  it('rejects manifests that are not machine disks', () => {
    expect(() => diskLayer({ config, layers: [layer, layer] })).toThrow(/exactly one layer/);
    expect(() => diskLayer({ config, layers: [{ ...layer, annotations: {} }] })).toThrow(/title/);
  });

  // A hostile registry's manifest: the declared size is the download's only bound and the free-space check, and
  // the title ends up in the record every later run must read back as a string.
  it.each([
    ['no size (the download would have no bound)', { ...layer, size: undefined }],
    ['a size that is text', { ...layer, size: '123' }],
    ['a negative size', { ...layer, size: -1 }],
    ['a digest that is no digest', { ...layer, digest: 'sha256:../../etc/passwd' }],
    ['a title that is not text', { ...layer, annotations: { 'org.opencontainers.image.title': 7 } }],
  ])('refuses a layer with %s', (_, bad) => {
    expect(() => diskLayer(JSON.parse(JSON.stringify({ config, layers: [bad] })) as never)).toThrow(
      /the disk layer/,
    );
  });

  it('says so when the disk child is an index (an index of indexes), instead of failing on a missing field', () => {
    expect(() =>
      diskLayer({ mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [] } as never),
    ).toThrow(/not an image manifest/);
  });
});

describe('hostile image indexes', () => {
  it('skips entries that are not descriptors (null, text, annotations that are not an object)', () => {
    const hostile = {
      manifests: [
        null,
        'x',
        { ...disk(30, 'x86_64', 'qemu'), annotations: 'qemu' },
        disk(10, 'x86_64', 'qemu'),
      ],
    };
    expect(selectDiskChild(hostile as never, 'x86_64', 'qemu').digest).toBe(d(10));
  });

  it('never picks an entry with a bad digest or one that claims to be an index', () => {
    const hostile = {
      manifests: [
        { ...disk(31, 'x86_64', 'qemu'), digest: 'sha256:../../../x' },
        { ...disk(32, 'x86_64', 'qemu'), mediaType: 'application/vnd.oci.image.index.v1+json' },
        disk(10, 'x86_64', 'qemu'),
      ],
    };
    expect(selectDiskChild(hostile as never, 'x86_64', 'qemu').digest).toBe(d(10));
  });

  it('names what a hostile index offers in one short line', () => {
    const hostile = {
      manifests: Array.from({ length: 5000 }, (_, i) =>
        disk(100 + i, `x\u001b[31m\u202e${i}\n::error::`, 'qemu'),
      ),
    };
    const error = (() => {
      try {
        selectDiskChild(hostile, 'x86_64', 'qemu');
      } catch (e) {
        return (e as Error).message;
      }
      return undefined;
    })();
    expect(error).toMatch(/^the image index has no x86_64 disk of type qemu; it offers x/);
    expect(error!.length).toBeLessThan(400);
    expect(error).not.toMatch(/[\p{Cc}\p{Cf}]/u);
  });

  it('refuses an index whose manifests are not a list', () => {
    expect(() => selectDiskChild({ manifests: { length: 1 } } as never, 'x86_64', 'qemu')).toThrow(
      /not an image index/,
    );
  });
});
