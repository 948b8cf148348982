/**
 * The docker-daemon reader's two parts without an engine: the streaming tar reader against archives GNU tar
 * writes (ustar, pax, gnu long names, links), and `docker save` exports in both formats an engine writes,
 * built here as files and read back as streams in small pieces.
 */
import { describe, expect, it, beforeAll, afterAll } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  createReadStream,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync, gzipSync } from 'node:zlib';
import { readOciLayout } from '../../src/core/oci/layout.js';
import { dockerSaveToLayout } from '../../src/actions/push-multi-tag/docker-save.js';
import { readTar, type TarEntry } from '../../src/actions/push-multi-tag/tar-stream.js';

const sha = (data: Buffer) => `sha256:${createHash('sha256').update(data).digest('hex')}`;
let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'ici-save-'));
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** `tar` of a directory's entries in the given order; the archive read back in 1000-byte pieces. */
function archive(dir: string, names: string[], format: 'ustar' | 'pax' | 'gnu' = 'pax'): string {
  const file = join(work, `${randomBytes(4).toString('hex')}.tar`);
  execFileSync('tar', [`--format=${format}`, '-cf', file, '-C', dir, ...names]);
  return file;
}
const pieces = (file: string) => createReadStream(file, { highWaterMark: 1000 }) as AsyncIterable<Buffer>;

async function entries(file: string): Promise<Array<TarEntry & { sha?: string }>> {
  const seen: Array<TarEntry & { sha?: string }> = [];
  await readTar(pieces(file), async (entry, body) => {
    const parts: Buffer[] = [];
    for await (const part of body) parts.push(part);
    seen.push(entry.type === 'file' ? { ...entry, sha: sha(Buffer.concat(parts)) } : entry);
  });
  return seen;
}

describe('readTar', () => {
  it.each(['ustar', 'pax', 'gnu'] as const)(
    '%s: names, sizes, links and contents, across piece boundaries',
    async (format) => {
      const dir = mkdtempSync(join(work, 'src-'));
      const big = randomBytes(70_001);
      const longDir = 'd'.repeat(60);
      mkdirSync(join(dir, longDir));
      const longName = `${longDir}/${'f'.repeat(80)}.json`;
      writeFileSync(join(dir, longName), '{}');
      writeFileSync(join(dir, 'big.bin'), big);
      writeFileSync(join(dir, 'empty'), '');
      symlinkSync(`../big.bin`, join(dir, longDir, 'link'));
      const file = archive(dir, ['big.bin', 'empty', longDir], format);
      const seen = await entries(file);
      expect(seen.find((e) => e.name === 'big.bin')).toMatchObject({
        type: 'file',
        size: 70_001,
        sha: sha(big),
      });
      expect(seen.find((e) => e.name === 'empty')).toMatchObject({ type: 'file', size: 0 });
      expect(seen.find((e) => e.name === longName)).toMatchObject({ type: 'file', size: 2 });
      expect(seen.find((e) => e.name === `${longDir}/link`)).toMatchObject({
        type: 'symlink',
        linkname: '../big.bin',
      });
      expect(
        seen.find((e) => e.name === `${longDir}/`)?.type ?? seen.find((e) => e.name === longDir)?.type,
      ).toBe('directory');
    },
  );

  it('skips what a handler does not read; refuses a damaged or cut archive', async () => {
    const dir = mkdtempSync(join(work, 'src-'));
    writeFileSync(join(dir, 'a'), randomBytes(3000));
    writeFileSync(join(dir, 'b'), 'second');
    const file = archive(dir, ['a', 'b']);
    const names: string[] = [];
    await readTar(pieces(file), async (entry) => {
      names.push(entry.name);
    });
    expect(names).toEqual(['a', 'b']);

    const damaged = readFileSync(file);
    damaged[10] ^= 0xff;
    await expect(readTar(Readable.from([damaged]), async () => undefined)).rejects.toThrow(
      'bad header checksum',
    );
    const cut = readFileSync(file).subarray(0, 2000);
    await expect(readTar(Readable.from([cut]), async () => undefined)).rejects.toThrow(
      'ends in the middle of an entry',
    );
  });
});

/** A layer tar holding one file. */
function layerTar(name: string, content: Buffer): Buffer {
  const dir = mkdtempSync(join(work, 'layer-'));
  writeFileSync(join(dir, name), content);
  return readFileSync(archive(dir, [name], 'ustar'));
}

interface Export {
  file: string;
  config: Buffer;
  diffIds: string[];
  layers: Buffer[];
  /** For blobsExport's `manifests`: the manifest's bytes, then the index's. */
  manifests?: Buffer[];
}

/** A `docker save` export in the classic format: `<id>/layer.tar`, a repeated layer as a symlink, `<hex>.json`. */
function classicExport(): Export {
  const dir = mkdtempSync(join(work, 'classic-'));
  const l1 = layerTar('one', randomBytes(5000));
  const l2 = layerTar('two', Buffer.from('two'));
  const diffIds = [sha(l1), sha(l2), sha(l1)];
  const config = Buffer.from(
    JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: diffIds } }),
  );
  const ids = ['a', 'b', 'c'].map((c) => c.repeat(64));
  for (const id of ids) mkdirSync(join(dir, id));
  writeFileSync(join(dir, ids[0]!, 'layer.tar'), l1);
  writeFileSync(join(dir, ids[1]!, 'layer.tar'), l2);
  symlinkSync(`../${ids[0]}/layer.tar`, join(dir, ids[2]!, 'layer.tar'));
  const configName = `${sha(config).slice(7)}.json`;
  writeFileSync(join(dir, configName), config);
  writeFileSync(
    join(dir, 'manifest.json'),
    JSON.stringify([
      { Config: configName, RepoTags: ['localhost/x:1'], Layers: ids.map((id) => `${id}/layer.tar`) },
    ]),
  );
  writeFileSync(join(dir, 'repositories'), '{}');
  return {
    file: archive(dir, [...ids, configName, 'manifest.json', 'repositories']),
    config,
    diffIds,
    layers: [l1, l2, l1],
  };
}

/** Docker ≥ 25's format: blobs/sha256/<hex>, layers uncompressed, or (containerd image store) gzip as pulled. */
function blobsExport(
  options: {
    gzipFirst?: boolean;
    bigLayer?: boolean;
    lie?: boolean;
    lieFirst?: boolean;
    swapFirst?: Buffer;
    /** An OCI manifest of the image, and an index listing it, as blobs (the containerd image store's export). */
    manifests?: { layers?: Buffer[] };
  } = {},
): Export {
  const dir = mkdtempSync(join(work, 'blobs-'));
  mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
  const l1 = layerTar('big', randomBytes(options.bigLayer ? 5 * 1024 * 1024 : 2000));
  const l2 = layerTar('small', Buffer.from('small'));
  const stored = [options.gzipFirst ? gzipSync(l1) : l1, l2];
  const diffIds = [
    options.lieFirst ? sha(Buffer.from('other')) : sha(l1),
    options.lie ? sha(Buffer.from('other')) : sha(l2),
  ];
  const config = Buffer.from(JSON.stringify({ os: 'linux', rootfs: { type: 'layers', diff_ids: diffIds } }));
  const extra: Buffer[] = [];
  if (options.manifests) {
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: {
          mediaType: 'application/vnd.oci.image.config.v1+json',
          digest: sha(config),
          size: config.length,
        },
        layers: (options.manifests.layers ?? stored).map((b) => ({
          mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
          digest: sha(b),
          size: b.length,
        })),
      }),
    );
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: [
          {
            mediaType: 'application/vnd.oci.image.manifest.v1+json',
            digest: sha(manifest),
            size: manifest.length,
          },
        ],
      }),
    );
    extra.push(manifest, index);
  }
  for (const blob of [...stored, config, ...extra])
    writeFileSync(join(dir, 'blobs', 'sha256', sha(blob).slice(7)), blob);
  // Other bytes under the first layer's name (a damaged or doctored export).
  if (options.swapFirst)
    writeFileSync(join(dir, 'blobs', 'sha256', sha(stored[0]!).slice(7)), options.swapFirst);
  writeFileSync(
    join(dir, 'manifest.json'),
    JSON.stringify([
      {
        Config: `blobs/sha256/${sha(config).slice(7)}`,
        Layers: stored.map((b) => `blobs/sha256/${sha(b).slice(7)}`),
      },
    ]),
  );
  writeFileSync(join(dir, 'index.json'), '{"schemaVersion":2,"manifests":[]}');
  writeFileSync(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  return {
    file: archive(dir, ['blobs', 'index.json', 'manifest.json', 'oci-layout']),
    config,
    diffIds,
    layers: stored,
    manifests: extra,
  };
}

async function toLayout(exp: Export, compress: 'gzip' | 'none' = 'gzip', imageId?: string) {
  const layoutDir = mkdtempSync(join(work, 'layout-'));
  await dockerSaveToLayout(pieces(exp.file), {
    layoutDir,
    compress,
    what: 'docker-daemon:x',
    ...(imageId ? { imageId } : {}),
  });
  return readOciLayout(layoutDir, 'image');
}

describe('dockerSaveToLayout', () => {
  it('classic format: config bytes kept (digest = image ID), layers gzip-compressed in order, a repeated layer through its symlink', async () => {
    const exp = classicExport();
    const image = await toLayout(exp);
    const [config, ...layers] = image.blobs;
    expect(config!.digest).toBe(sha(exp.config));
    const manifest = JSON.parse(image.root.bytes.toString('utf8')) as {
      layers: { digest: string; mediaType: string }[];
    };
    expect(manifest.layers).toHaveLength(3);
    expect(manifest.layers[0]!.digest).toBe(manifest.layers[2]!.digest);
    expect(manifest.layers.map((l) => l.mediaType)).toEqual(
      Array(3).fill('application/vnd.oci.image.layer.v1.tar+gzip'),
    );
    for (const [i, layer] of manifest.layers.entries()) {
      const blob = readFileSync(join(image.dir, 'blobs', 'sha256', layer.digest.slice(7)));
      expect(sha(gunzipSync(blob))).toBe(exp.diffIds[i]);
    }
    expect(layers).toHaveLength(2);
  });

  it('a layer over 16 MiB in the v7 tar format (no ustar magic, as `docker import` of such a tarball keeps it) is a layer', async () => {
    const dir = mkdtempSync(join(work, 'v7-'));
    writeFileSync(join(dir, 'big'), Buffer.alloc(17 * 1024 * 1024));
    const file = join(dir, 'layer.tar');
    execFileSync('tar', ['--format=v7', '-cf', file, '-C', dir, 'big']);
    const layer = readFileSync(file);
    expect(layer.subarray(257, 262).toString('latin1')).not.toBe('ustar');
    mkdirSync(join(dir, 'l'));
    writeFileSync(join(dir, 'l', 'layer.tar'), layer);
    const config = Buffer.from(JSON.stringify({ rootfs: { type: 'layers', diff_ids: [sha(layer)] } }));
    writeFileSync(join(dir, 'c.json'), config);
    writeFileSync(
      join(dir, 'manifest.json'),
      JSON.stringify([{ Config: 'c.json', Layers: ['l/layer.tar'] }]),
    );
    // Read in 64 KiB pieces: 17 MiB in the 1000-byte pieces of toLayout would take seconds.
    const layoutDir = mkdtempSync(join(work, 'layout-'));
    await dockerSaveToLayout(createReadStream(archive(dir, ['l', 'c.json', 'manifest.json'])), {
      layoutDir,
      compress: 'none',
      what: 'docker-daemon:x',
      imageId: sha(config),
    });
    const image = await readOciLayout(layoutDir, 'image');
    const manifest = JSON.parse(image.root.bytes.toString('utf8')) as { layers: { digest: string }[] };
    expect(manifest.layers.map((l) => l.digest)).toEqual([sha(layer)]);
  });

  it('Docker 25 format: a 5 MiB layer streamed into the layout as it arrives', async () => {
    const exp = blobsExport({ bigLayer: true });
    const image = await toLayout(exp);
    const manifest = JSON.parse(image.root.bytes.toString('utf8')) as {
      layers: { digest: string; size: number }[];
    };
    const first = readFileSync(join(image.dir, 'blobs', 'sha256', manifest.layers[0]!.digest.slice(7)));
    expect(sha(gunzipSync(first))).toBe(exp.diffIds[0]);
    expect(manifest.layers[0]!.size).toBe(first.length);
  });

  it('containerd image store: a layer exported gzip-compressed is kept as it is', async () => {
    const exp = blobsExport({ gzipFirst: true });
    const image = await toLayout(exp);
    const manifest = JSON.parse(image.root.bytes.toString('utf8')) as {
      layers: { digest: string; mediaType: string }[];
    };
    expect(manifest.layers[0]).toEqual(
      expect.objectContaining({
        digest: sha(exp.layers[0]!),
        mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
      }),
    );
  });

  it('an empty layer (a tar of end blocks only, as docker writes for metadata-only steps) is compressed like any other', async () => {
    const dir = mkdtempSync(join(work, 'empty-'));
    const empty = Buffer.alloc(1024);
    const config = Buffer.from(JSON.stringify({ rootfs: { type: 'layers', diff_ids: [sha(empty)] } }));
    mkdirSync(join(dir, 'l'));
    writeFileSync(join(dir, 'l', 'layer.tar'), empty);
    writeFileSync(join(dir, 'c.json'), config);
    writeFileSync(
      join(dir, 'manifest.json'),
      JSON.stringify([{ Config: 'c.json', Layers: ['l/layer.tar'] }]),
    );
    const image = await toLayout({
      file: archive(dir, ['l', 'c.json', 'manifest.json']),
      config,
      diffIds: [],
      layers: [],
    });
    const manifest = JSON.parse(image.root.bytes.toString('utf8')) as { layers: { digest: string }[] };
    const blob = readFileSync(join(image.dir, 'blobs', 'sha256', manifest.layers[0]!.digest.slice(7)));
    expect(gunzipSync(blob)).toEqual(empty);
  });

  it('compress: none keeps layers uncompressed (their digest is their diff_id)', async () => {
    const exp = blobsExport();
    const image = await toLayout(exp, 'none');
    const manifest = JSON.parse(image.root.bytes.toString('utf8')) as {
      layers: { digest: string; mediaType: string }[];
    };
    expect(manifest.layers.map((l) => l.digest)).toEqual(exp.diffIds);
    expect(manifest.layers[0]!.mediaType).toBe('application/vnd.oci.image.layer.v1.tar');
  });

  it.each([
    ['a gzip-compressed layer', true],
    ['an uncompressed layer', false],
  ])('refuses %s whose bytes are not the digest its name says', async (_name, gzipFirst) => {
    const other = gzipFirst
      ? gzipSync(layerTar('evil', randomBytes(3000)))
      : layerTar('evil', randomBytes(3000));
    const exp = blobsExport({ gzipFirst, swapFirst: other });
    await expect(toLayout(exp)).rejects.toThrow(
      new RegExp(
        `docker-daemon:x: blobs/sha256/${sha(exp.layers[0]!).slice(7)} holds content ${sha(other)}, not the content its name is the digest of.`,
      ),
    );
  });

  it('refuses an export that contradicts itself or is not one', async () => {
    await expect(toLayout(blobsExport({ lie: true }))).rejects.toThrow(
      /docker-daemon:x: layer 2 \(blobs\/sha256\/[0-9a-f]+\) has content sha256:[0-9a-f]+; the config says sha256:/,
    );
    const dir = mkdtempSync(join(work, 'notsave-'));
    writeFileSync(join(dir, 'hello'), 'x');
    await expect(
      toLayout({ file: archive(dir, ['hello']), config: Buffer.alloc(0), diffIds: [], layers: [] }),
    ).rejects.toThrow('docker-daemon:x: the export has no manifest.json; is it a docker save archive?');
  });

  it('given the image ID asked for: an export of another image, or of two, is refused naming the IDs', async () => {
    const exp = classicExport();
    const asked = sha(Buffer.from('the image asked for'));
    await expect(toLayout(exp, 'gzip', sha(exp.config))).resolves.toBeDefined();
    await expect(toLayout(exp, 'gzip', asked)).rejects.toThrow(
      `docker-daemon:x: the export is image ${sha(exp.config)}, not ${asked}, the image asked for.`,
    );
    // Two images: the classic export's, and a second one beside it.
    const dir = mkdtempSync(join(work, 'two-'));
    execFileSync('tar', ['-xf', exp.file, '-C', dir]);
    const other = Buffer.from(JSON.stringify({ rootfs: { type: 'layers', diff_ids: [] } }));
    writeFileSync(join(dir, 'other.json'), other);
    const entries = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as unknown[];
    writeFileSync(
      join(dir, 'manifest.json'),
      JSON.stringify([...entries, { Config: 'other.json', RepoTags: ['localhost/y:1'], Layers: [] }]),
    );
    const two = archive(dir, ['.']);
    await expect(toLayout({ ...exp, file: two }, 'gzip', sha(exp.config))).rejects.toThrow(
      `docker-daemon:x: the export holds 2 images (${sha(exp.config)}, ${sha(other)}) where ${sha(exp.config)} was asked for; expected one.`,
    );
  });

  it('containerd image store: an ID naming a manifest (or an index) in the export that lists this config and these layers is that image; one listing other layers is not', async () => {
    const exp = blobsExport({ gzipFirst: true, manifests: {} });
    const [manifest, index] = exp.manifests!;
    await expect(toLayout(exp, 'gzip', sha(manifest!))).resolves.toBeDefined();
    await expect(toLayout(exp, 'gzip', sha(index!))).resolves.toBeDefined();
    const swapped = blobsExport({
      gzipFirst: true,
      manifests: { layers: [gzipSync(Buffer.from('x')), Buffer.alloc(1)] },
    });
    await expect(toLayout(swapped, 'gzip', sha(swapped.manifests![1]!))).rejects.toThrow(
      `docker-daemon:x: the export is image ${sha(swapped.config)}, not ${sha(swapped.manifests![1]!)}, the image asked for.`,
    );
  });

  it('containerd image store, a multi-platform image pulled for the host only (as on a runner): the ID is the index, the export holds it and the host manifest with its blobs (not the other platform), and an attestation manifest without its blobs', async () => {
    // What moby's ExportImage (all platforms, the host's preferred, containerd's WithSkipMissing) writes for
    // `GET /images/get?names=<index digest>`, the ID `GET /images/<name>/json` gives: see the README.
    const dir = mkdtempSync(join(work, 'multi-'));
    mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
    const put = (data: Buffer) => {
      writeFileSync(join(dir, 'blobs', 'sha256', sha(data).slice(7)), data);
      return data;
    };
    const tar = layerTar('app', randomBytes(3000));
    // The empty layer old images carry (32 bytes of gzip), smaller than any layer the reader streams.
    const empty = Buffer.alloc(1024);
    const layers = [put(gzipSync(tar)), put(gzipSync(empty))];
    const config = put(
      Buffer.from(
        JSON.stringify({
          architecture: 'amd64',
          os: 'linux',
          rootfs: { type: 'layers', diff_ids: [sha(tar), sha(empty)] },
        }),
      ),
    );
    const descriptor = (data: Buffer, mediaType: string, extra: object = {}) => ({
      mediaType,
      digest: sha(data),
      size: data.length,
      ...extra,
    });
    const manifestOf = (cfg: Buffer, ls: Buffer[], configType = 'application/vnd.oci.image.config.v1+json') =>
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          config: descriptor(cfg, configType),
          layers: ls.map((l) => descriptor(l, 'application/vnd.oci.image.layer.v1.tar+gzip')),
        }),
      );
    const host = put(manifestOf(config, layers));
    // Another platform: neither its manifest nor its blobs were pulled.
    const arm = manifestOf(Buffer.from('{"architecture":"arm64"}'), [gzipSync(Buffer.from('arm'))]);
    // An attestation manifest whose manifest is here but not its blobs: exported alone.
    const attestation = put(
      manifestOf(Buffer.from('{}'), [Buffer.from('{"predicate":{}}')], 'application/vnd.in-toto+json'),
    );
    const index = put(
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.index.v1+json',
          manifests: [
            descriptor(host, 'application/vnd.oci.image.manifest.v1+json', {
              platform: { architecture: 'amd64', os: 'linux' },
            }),
            descriptor(arm, 'application/vnd.oci.image.manifest.v1+json', {
              platform: { architecture: 'arm64', os: 'linux', variant: 'v8' },
            }),
            descriptor(attestation, 'application/vnd.oci.image.manifest.v1+json', {
              platform: { architecture: 'unknown', os: 'unknown' },
              annotations: { 'vnd.docker.reference.type': 'attestation-manifest' },
            }),
          ],
        }),
      ),
    );
    writeFileSync(
      join(dir, 'index.json'),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [descriptor(index, 'application/vnd.oci.image.index.v1+json')],
      }),
    );
    writeFileSync(
      join(dir, 'manifest.json'),
      JSON.stringify([
        {
          Config: `blobs/sha256/${sha(config).slice(7)}`,
          RepoTags: null,
          Layers: layers.map((l) => `blobs/sha256/${sha(l).slice(7)}`),
        },
      ]),
    );
    writeFileSync(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    // containerd writes its records sorted by name.
    const exp = {
      file: archive(dir, ['blobs', 'index.json', 'manifest.json', 'oci-layout']),
      config,
      diffIds: [],
      layers,
    };
    const image = await toLayout(exp, 'gzip', sha(index));
    const pushed = JSON.parse(image.root.bytes.toString('utf8')) as {
      config: { digest: string };
      layers: { digest: string }[];
    };
    expect(pushed.config.digest).toBe(sha(config));
    expect(pushed.layers.map((l) => l.digest)).toEqual(layers.map(sha));
    // The index's manifest (what an engine on another platform would name) is that image too.
    await expect(toLayout(exp, 'gzip', sha(host))).resolves.toBeDefined();
  });

  it('an ID whose name in the export is a link to a manifest of other bytes does not name that manifest', async () => {
    const exp = blobsExport({ gzipFirst: true, manifests: {} });
    const dir = mkdtempSync(join(work, 'linked-'));
    execFileSync('tar', ['-xf', exp.file, '-C', dir]);
    const claimed = sha(Buffer.from('an image the engine never had'));
    symlinkSync(sha(exp.manifests![0]!).slice(7), join(dir, 'blobs', 'sha256', claimed.slice(7)));
    await expect(toLayout({ ...exp, file: archive(dir, ['.']) }, 'gzip', claimed)).rejects.toThrow(
      `docker-daemon:x: the export is image ${sha(exp.config)}, not ${claimed}, the image asked for.`,
    );
  });

  it('a compressed layer no manifest of the image ID lists is decompressed and checked against its diff_id', async () => {
    const exp = blobsExport({ gzipFirst: true, lieFirst: true });
    await expect(toLayout(exp, 'gzip', sha(exp.config))).rejects.toThrow(
      new RegExp(
        `docker-daemon:x: layer 1 \\(blobs/sha256/${sha(exp.layers[0]!).slice(7)}\\) has content ${sha(gunzipSync(exp.layers[0]!))}; the config says ${exp.diffIds[0]}\\.`,
      ),
    );
    // The same lie, bound by the manifest the ID names: the engine's own image, as it keeps it.
    const bound = blobsExport({ gzipFirst: true, lieFirst: true, manifests: {} });
    await expect(toLayout(bound, 'gzip', sha(bound.manifests![0]!))).resolves.toBeDefined();
  });
});
