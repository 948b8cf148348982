import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
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

  it('refuses a manifest or index.json that is a FIFO, a device or huge, at once and naming it', async () => {
    const g = generateLayout(join(work, 'hostile'), { layers: [1000], ref: 'v1' });
    const manifestFile = blobPath(g.dir, g.digest);
    const unreadable = `the OCI layout ${g.dir} has an unreadable manifest ${g.digest}: cannot read ${manifestFile}`;
    // A FIFO nobody writes: reading it whole used to wait forever for a writer.
    rmSync(manifestFile);
    execFileSync('mkfifo', [manifestFile]);
    await expect(readOciLayout(g.dir, 'v1')).rejects.toThrow(`${unreadable}: not a regular file.`);
    rmSync(manifestFile);
    // An endless device: read whole, it would fill the memory.
    symlinkSync('/dev/zero', manifestFile);
    await expect(readOciLayout(g.dir, 'v1')).rejects.toThrow(`${unreadable}: not a regular file.`);
    rmSync(manifestFile);
    // A disk-sized file (sparse here) is no manifest: refused after 4 MiB, not buffered.
    writeFileSync(manifestFile, '');
    truncateSync(manifestFile, 2 ** 40);
    await expect(readOciLayout(g.dir, 'v1')).rejects.toThrow(
      `${unreadable}: it is larger than 4194304 bytes.`,
    );

    const indexJson = join(g.dir, 'index.json');
    rmSync(indexJson);
    execFileSync('mkfifo', [indexJson]);
    await expect(readOciLayout(g.dir, 'v1')).rejects.toThrow(
      `${g.dir} is not a readable OCI image layout (index.json: cannot read ${indexJson}: not a regular file.)`,
    );
  }, 20_000);

  it('reads a manifest once however often indexes list it', async () => {
    const g = generateLayout(join(work, 'repeated'), { layers: [500] });
    // An index listing one image 20,000 times: one read, not 20,000 files open at once.
    const child = { digest: g.digest, size: readFileSync(blobPath(g.dir, g.digest)).length };
    const indexBytes = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: Array.from({ length: 20_000 }, () => ({
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: child.digest,
          size: child.size,
        })),
      }),
    );
    const digest = `sha256:${createHash('sha256').update(indexBytes).digest('hex')}`;
    writeFileSync(blobPath(g.dir, digest), indexBytes);
    writeFileSync(
      join(g.dir, 'index.json'),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [
          { mediaType: 'application/vnd.oci.image.index.v1+json', digest, size: indexBytes.length },
        ],
      }),
    );
    const image = await readOciLayout(g.dir);
    expect(image.manifests.map((m) => m.digest)).toEqual([child.digest, digest]);
    expect(image.root.children).toHaveLength(20_000);
  });

  /** Writes `json` as a blob of g's layout; its descriptor. */
  const putBlob = (dir: string, mediaType: string, json: unknown) => {
    const bytes = Buffer.from(JSON.stringify(json));
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    writeFileSync(blobPath(dir, digest), bytes);
    return { mediaType, digest, size: bytes.length };
  };
  const INDEX = 'application/vnd.oci.image.index.v1+json';
  const MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
  const setRoot = (dir: string, root: { digest: string }) =>
    writeFileSync(join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [root] }));

  it('walks indexes that each list the next one twice, 64 deep, once per manifest (not 2^64 times)', async () => {
    const g = generateLayout(join(work, 'diamonds'), { layers: [10] });
    let top = { mediaType: MANIFEST, digest: g.digest, size: readFileSync(blobPath(g.dir, g.digest)).length };
    const indexes: string[] = [];
    for (let level = 0; level < 64; level++) {
      top = putBlob(g.dir, INDEX, { schemaVersion: 2, mediaType: INDEX, manifests: [top, top] });
      indexes.push(top.digest);
    }
    setRoot(g.dir, top);
    const image = await readOciLayout(g.dir);
    expect(image.manifests.map((m) => m.digest)).toEqual([g.digest, ...indexes]);
    expect(image.blobs).toHaveLength(g.blobs.length);
  }, 20_000);

  it('holds at most 16 manifests open at once, however deeply indexes nest', async () => {
    const g = generateLayout(join(work, 'nested'), { layers: [10] });
    const config = JSON.parse(readFileSync(blobPath(g.dir, g.digest), 'utf8')).config;
    // 16 indexes of 32 distinct images each: read index by index, 16 x 16 manifests were open at once.
    const indexes = Array.from({ length: 16 }, (_, i) =>
      putBlob(g.dir, INDEX, {
        schemaVersion: 2,
        mediaType: INDEX,
        manifests: Array.from({ length: 32 }, (_, j) =>
          putBlob(g.dir, MANIFEST, {
            schemaVersion: 2,
            mediaType: MANIFEST,
            config,
            layers: [],
            annotations: { image: `${i}.${j}` },
          }),
        ),
      }),
    );
    setRoot(g.dir, putBlob(g.dir, INDEX, { schemaVersion: 2, mediaType: INDEX, manifests: indexes }));
    // Counted between the reads' steps; a read holds two descriptors for a moment (the O_PATH one, reopened).
    const blobs = join(g.dir, 'blobs');
    const openBlobs = () =>
      readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`).startsWith(blobs);
        } catch {
          return false; // the descriptor readdir itself used
        }
      }).length;
    let most = 0;
    let reading = true;
    const count = () => {
      most = Math.max(most, openBlobs());
      if (reading) setImmediate(count);
    };
    count();
    const image = await readOciLayout(g.dir).finally(() => (reading = false));
    expect(image.manifests).toHaveLength(16 * 32 + 16 + 1);
    expect(most).toBeLessThanOrEqual(2 * 16);
  }, 20_000);

  it('refuses a manifest, child or blob named by something that is no digest (it could name any file)', async () => {
    const g = generateLayout(join(work, 'not-a-digest'), { layers: [100] });
    const outside = join(work, 'outside.json');
    writeFileSync(outside, '{"schemaVersion":2}');
    const hostile = 'sha256:../../../outside.json';
    const sha = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    const publish = (manifest: { mediaType: string; [field: string]: unknown }) => {
      const bytes = Buffer.from(JSON.stringify(manifest));
      writeFileSync(blobPath(g.dir, sha(bytes)), bytes);
      writeFileSync(
        join(g.dir, 'index.json'),
        JSON.stringify({
          schemaVersion: 2,
          manifests: [{ mediaType: manifest.mediaType, digest: sha(bytes), size: bytes.length }],
        }),
      );
    };
    const image = JSON.parse(readFileSync(blobPath(g.dir, g.digest), 'utf8')) as {
      mediaType: string;
      layers: { digest: string }[];
    };
    image.layers[0]!.digest = hostile;
    publish(image);
    await expect(readOciLayout(g.dir)).rejects.toThrow(`names a blob by "${hostile}", which is no digest.`);
    publish({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: hostile, size: 19 }],
    });
    await expect(readOciLayout(g.dir)).rejects.toThrow(
      `names a manifest by "${hostile}", which is no digest.`,
    );
  });
});
