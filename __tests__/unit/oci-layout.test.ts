import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { blobPath, readOciLayout } from '../../src/core/oci/layout.js';
import { generateLayout } from '../support/oci-layout.js';

describe('readOciLayout', () => {
  let work: string;
  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'ici-layout-'));
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it('reads a single-arch image by ref name, by digest, or as the only image', async () => {
    const g = generateLayout(join(work, 'single'), { layers: [1000, 2000], ref: 'v1' });
    for (const ref of ['v1', g.digest, undefined]) {
      const image = await readOciLayout(g.dir, ref);
      expect(image.root.digest).toBe(g.digest);
      expect(image.manifests.map((m) => m.digest)).toEqual([g.digest]);
      expect(image.blobs.map((b) => b.digest)).toEqual(g.blobs.map((b) => b.digest));
    }
  });

  it('lists the children of an index before the index, and each blob once', async () => {
    const g = generateLayout(join(work, 'multi'), {
      layers: [500],
      platforms: [
        { os: 'linux', architecture: 'amd64' },
        { os: 'linux', architecture: 'arm64' },
      ],
    });
    const image = await readOciLayout(g.dir, 'latest');
    expect(image.manifests.map((m) => m.digest)).toEqual([...g.children.map((c) => c.digest), g.digest]);
    expect(image.blobs).toHaveLength(g.blobs.length);
    expect(image.root.children).toHaveLength(2);
  });

  it('names what is wrong: unknown ref, tampered manifest, missing or truncated blob', async () => {
    const g = generateLayout(join(work, 'bad'), { layers: [1000], ref: 'v1' });
    await expect(readOciLayout(g.dir, 'v2')).rejects.toThrow("has no image 'v2' (it has: v1)");
    await expect(readOciLayout(join(work, 'nowhere'))).rejects.toThrow('is not a readable OCI image layout');

    const layer = g.blobs[1]!;
    writeFileSync(blobPath(g.dir, layer.digest), 'short');
    await expect(readOciLayout(g.dir, 'v1')).rejects.toThrow(`blob ${layer.digest} in ${g.dir} is 5 bytes`);
    rmSync(blobPath(g.dir, layer.digest));
    await expect(readOciLayout(g.dir, 'v1')).rejects.toThrow(`lacks blob ${layer.digest}`);

    const manifestFile = blobPath(g.dir, g.digest);
    writeFileSync(
      manifestFile,
      readFileSync(manifestFile, 'utf8').replace('"schemaVersion":2', '"schemaVersion": 2'),
    );
    await expect(readOciLayout(g.dir, 'v1')).rejects.toThrow(`expected ${g.digest}`);
  });
});
