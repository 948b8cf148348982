/**
 * push-multi-tag's local sources fed what a broken or hostile producer could write: tar headers that lie, an
 * export whose metadata would not fit in memory, a name given twice, an OCI archive of links out of its
 * directory. Archives are built here block by block (no tar writer makes these), read back as streams.
 */
import { describe, expect, it, beforeAll, afterAll } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { readOciLayout } from '../../src/core/oci/layout.js';
import { dockerSaveToLayout } from '../../src/actions/push-multi-tag/docker-save.js';
import { readDockerDaemonImage } from '../../src/actions/push-multi-tag/docker-daemon.js';
import { openImageSource } from '../../src/actions/push-multi-tag/source.js';
import { readTar } from '../../src/actions/push-multi-tag/tar-stream.js';

const sha = (data: Buffer) => `sha256:${createHash('sha256').update(data).digest('hex')}`;
let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'ici-hostile-'));
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** One ustar header block, with whatever size and type it is told to claim. */
function header(name: string, size: number, type = '0', link = ''): Buffer {
  const block = Buffer.alloc(512);
  block.write(name, 0, 100, 'utf8');
  block.write('0000644\0', 100, 'ascii');
  block.write('0000000\0', 108, 'ascii');
  block.write('0000000\0', 116, 'ascii');
  block.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'ascii');
  block.write('00000000000\0', 136, 'ascii');
  block.write(type, 156, 'ascii');
  block.write(link, 157, 100, 'utf8');
  block.write('ustar\x0000', 257, 'ascii');
  return sealed(block);
}

/** The block with its checksum (again), after it was written to. */
function sealed(block: Buffer): Buffer {
  block.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of block) sum += byte;
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'ascii');
  return block;
}

const pad = (data: Buffer) => Buffer.concat([data, Buffer.alloc((512 - (data.length % 512)) % 512)]);
const file = (name: string, data: Buffer) => [header(name, data.length), pad(data)];
const END = Buffer.alloc(1024);

/** PAX records, each `<length> <key>=<value>\n` where the length counts itself. */
const paxRecords = (records: Record<string, string>) =>
  Buffer.from(
    Object.entries(records)
      .map(([key, value]) => {
        const body = ` ${key}=${value}\n`;
        const length = body.length + String(body.length + 2).length;
        return `${length}${body}`;
      })
      .join(''),
  );

/** A layer (an empty tar, as docker writes for metadata-only steps), its config and a manifest.json. */
function image(configName = 'c.json', extra: object = {}) {
  const layer = Buffer.alloc(1024);
  const config = Buffer.from(
    JSON.stringify({ ...extra, rootfs: { type: 'layers', diff_ids: [sha(layer)] } }),
  );
  const manifest = Buffer.from(JSON.stringify([{ Config: configName, Layers: ['l/layer.tar'] }]));
  return { layer, config, manifest };
}

/** An export of one image: `layer` as l/layer.tar, then the config and manifest.json (as image() makes them). */
const exportOf = (layer: Buffer, config: Buffer, manifest: Buffer) =>
  Buffer.concat([
    ...file('l/layer.tar', layer),
    ...file('c.json', config),
    ...file('manifest.json', manifest),
    END,
  ]);

async function toLayout(stream: AsyncIterable<Buffer>) {
  const layoutDir = mkdtempSync(join(work, 'layout-'));
  await dockerSaveToLayout(stream, { layoutDir, compress: 'none', what: 'docker-daemon:x' });
  return readOciLayout(layoutDir, 'image');
}

describe('readTar against headers that lie', () => {
  it.each([
    ['symlink', '2', 'x', 'symlink'],
    ['hardlink', '1', 'x', 'hardlink'],
    ['directory', '5', 'x', 'directory'],
    ['FIFO', '6', 'x', 'device or FIFO'],
    ['NUL-typed (old-style) file named x/, a directory to Go,', '\0', 'x/', 'directory'],
  ])(
    'a %s that claims data is refused: Go and GNU tar read the next header there',
    async (_what, type, name, kind) => {
      // What docker load would read as the archive's manifest.json sits where the link claims its data is.
      const hidden = header('manifest.json', 2);
      const stream = Buffer.concat([header(name, 1024, type, 'y'), hidden, pad(Buffer.from('[]')), END]);
      const names: string[] = [];
      await expect(
        readTar(Readable.from([stream]), async (entry) => {
          names.push(entry.name);
        }),
      ).rejects.toThrow(`a tar ${kind} entry claims 1024 bytes of data.`);
      expect(names).toEqual([]);
    },
  );
});

describe('readTar reads names as Go and GNU tar do', () => {
  it("a GNU header's time fields are no name prefix", async () => {
    const gnu = header('manifest.json', 0);
    gnu.write('ustar  \0', 257, 'latin1');
    gnu.write('evil', 345, 'latin1');
    sealed(gnu);
    const names: string[] = [];
    await readTar(Readable.from([Buffer.concat([gnu, END])]), async (entry) => {
      names.push(entry.name);
    });
    expect(names).toEqual(['manifest.json']);
  });

  const sparsePax = paxRecords({
    'GNU.sparse.major': '1',
    'GNU.sparse.minor': '0',
    'GNU.sparse.name': 'manifest.json',
    'GNU.sparse.realsize': '2',
  });
  it.each([
    ['an old GNU one (its map may go on past its header)', [header('x', 512, 'S'), Buffer.alloc(512)]],
    [
      'a PAX one (its map starts its data; GNU.sparse.name is its real name to Go)',
      [header('PaxHeaders/x', sparsePax.length, 'x'), pad(sparsePax), header('x', 512), Buffer.alloc(512)],
    ],
  ])('a GNU sparse file, %s, is refused', async (_what, blocks) => {
    const stream = Buffer.concat([...blocks, END]);
    await expect(readTar(Readable.from([stream]), async () => undefined)).rejects.toThrow(
      'a tar entry is a GNU sparse file; an image export holds none.',
    );
  });
});

describe('dockerSaveToLayout against a hostile export', () => {
  it('holds at most 64 MiB of entries that are no layer in memory, and says so when what it needs came past it', async () => {
    const { layer, config, manifest } = image();
    const filler = Buffer.alloc(16 * 1024 * 1024, 0x20);
    async function* stream() {
      // Four 16 MiB entries that are neither layers nor too large for metadata, each kept until manifest.json.
      for (let i = 0; i < 4; i++) yield* file(`junk${i}`, filler);
      yield* file('c.json', config);
      yield* file('l/layer.tar', layer);
      yield* file('manifest.json', manifest);
      yield END;
    }
    await expect(toLayout(stream())).rejects.toThrow(
      'docker-daemon:x: manifest.json is too large for image metadata (over 16 MiB, or past 64 MiB of metadata in all) and is no layer.',
    );

    // The same name given again replaces what it held: only what is still named counts.
    async function* again() {
      for (let i = 0; i < 5; i++) yield* file('junk', filler);
      yield* file('c.json', config);
      yield* file('l/layer.tar', layer);
      yield* file('manifest.json', manifest);
      yield END;
    }
    expect((await toLayout(again())).blobs[0]!.digest).toBe(sha(config));
  });

  it.each([
    ['20 entries of megabyte names', 20, 1_000_000],
    ['20,000 entries', 20_000, 8],
  ])(
    'keeps at most 16 MiB of entries and names: an export of %s (that may never end) is refused',
    async (_what, count, length) => {
      async function* stream() {
        for (let i = 0; i < count; i++) {
          const name = String(i).padStart(length, 'n');
          if (name.length > 100) {
            const pax = paxRecords({ path: name });
            yield Buffer.concat([header('PaxHeaders/n', pax.length, 'x'), pad(pax), header('n', 0)]);
          } else yield header(name, 0);
        }
        yield END;
      }
      await expect(toLayout(stream())).rejects.toThrow(
        "docker-daemon:x: the export's entries and their names pass 16 MiB; no image has that many.",
      );
    },
  );

  it('a name given twice is what the later entry holds, a file after a symlink of that name too (as docker load unpacks it)', async () => {
    const { layer, config, manifest } = image();
    const decoy = image('c.json', { os: 'decoy' }).config;
    const stream = Buffer.concat([
      ...file('decoy.json', decoy),
      header('c.json', 0, '2', 'decoy.json'),
      ...file('c.json', config),
      ...file('l/layer.tar', layer),
      ...file('manifest.json', Buffer.from('[]')),
      ...file('manifest.json', manifest),
      END,
    ]);
    const read = await toLayout(Readable.from([stream]));
    expect(read.blobs[0]!.digest).toBe(sha(config));
  });
});

describe('dockerSaveToLayout finds names as docker load does (the archive unpacked in a chroot)', () => {
  it('`/manifest.json` is manifest.json, and the later one wins', async () => {
    const { layer, config, manifest } = image();
    const decoy = image('decoy.json').manifest;
    const stream = Buffer.concat([
      ...file('decoy.json', image('c.json', { os: 'decoy' }).config),
      ...file('c.json', config),
      ...file('l/layer.tar', layer),
      ...file('manifest.json', decoy),
      ...file('/manifest.json', manifest),
      END,
    ]);
    expect((await toLayout(Readable.from([stream]))).blobs[0]!.digest).toBe(sha(config));
  });

  it('an absolute symlink target is read from the archive root, not from the link directory', async () => {
    const { layer, config } = image();
    const stream = Buffer.concat([
      ...file('x.json', config),
      ...file('a/x.json', image('c.json', { os: 'decoy' }).config),
      header('a/c.json', 0, '2', '/x.json'),
      ...file('l/layer.tar', layer),
      ...file(
        'manifest.json',
        Buffer.from(JSON.stringify([{ Config: 'a/c.json', Layers: ['l/layer.tar'] }])),
      ),
      END,
    ]);
    expect((await toLayout(Readable.from([stream]))).blobs[0]!.digest).toBe(sha(config));
  });
});

describe('dockerSaveToLayout against an export listing one layer 30,000 times', () => {
  it('is refused at once: no registry takes a manifest that large (4 MiB)', async () => {
    // A real layer tar (a header and the end blocks), stored to disk like any other.
    const layer = Buffer.concat([header('f', 0), END]);
    const count = 30_000;
    const config = Buffer.from(JSON.stringify({ rootfs: { diff_ids: Array(count).fill(sha(layer)) } }));
    const manifest = Buffer.from(
      JSON.stringify([{ Config: 'c.json', Layers: Array(count).fill('l/layer.tar') }]),
    );
    const stream = Buffer.concat([
      ...file('c.json', config),
      ...file('l/layer.tar', layer),
      ...file('manifest.json', manifest),
      END,
    ]);
    const layoutDir = mkdtempSync(join(work, 'layout-'));
    await expect(
      dockerSaveToLayout(Readable.from([stream]), { layoutDir, compress: 'gzip', what: 'docker-daemon:x' }),
    ).rejects.toThrow(
      /^docker-daemon:x: the image lists 30000 layers; its manifest would be \d+ bytes, more than registries take \(4194304\)\.$/,
    );
  });
});

describe('JSON of the wrong shape: said as such, not as a TypeError', () => {
  it.each([
    [
      'manifest.json of [null]',
      Buffer.from('[null]'),
      image().config,
      'the export lacks an entry named in manifest.json.',
    ],
    [
      'a config of null',
      image().manifest,
      Buffer.from('null'),
      'manifest.json lists 1 layers, the config no diff_ids.',
    ],
  ])('docker-daemon: %s', async (_what, manifest, config, message) => {
    const stream = Buffer.concat([
      ...file('c.json', config),
      ...file('l/layer.tar', image().layer),
      ...file('manifest.json', manifest),
      END,
    ]);
    await expect(toLayout(Readable.from([stream]))).rejects.toThrow(`docker-daemon:x: ${message}`);
  });

  it.each([
    ['null', 'index.json of DIR is no JSON object.'],
    ['{"manifests":5}', "index.json of DIR has 'manifests' that is no list of descriptors."],
    ['{"manifests":[null]}', "index.json of DIR has 'manifests' that is no list of descriptors."],
  ])('an OCI layout whose index.json is %s', async (index, message) => {
    const dir = mkdtempSync(join(work, 'layout-'));
    writeFileSync(join(dir, 'index.json'), index);
    await expect(readOciLayout(dir, 'x')).rejects.toThrow(message.replace('DIR', dir));
  });

  it.each([
    ['null', 'is no JSON object.'],
    ['{"config":{},"layers":{}}', "has 'layers' that is no list of descriptors."],
  ])('an OCI layout whose manifest is %s', async (manifest, message) => {
    const dir = mkdtempSync(join(work, 'layout-'));
    const digest = sha(Buffer.from(manifest));
    mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
    writeFileSync(join(dir, 'blobs', 'sha256', digest.slice(7)), manifest);
    writeFileSync(
      join(dir, 'index.json'),
      JSON.stringify({ manifests: [{ digest, size: manifest.length }] }),
    );
    await expect(readOciLayout(dir)).rejects.toThrow(`manifest ${digest} in ${dir} ${message}`);
  });
});

describe('an OCI archive or layout that points out of itself', () => {
  const secret = () => {
    const path = join(work, `secret-${Math.random().toString(36).slice(2)}`);
    writeFileSync(path, 'root:$6$SECRETHASH:19000:0:99999:7:::\n');
    return path;
  };

  it.each([
    ['index.json', 'index.json'],
    ['a blob', `blobs/sha256/${'a'.repeat(64)}`],
  ])(
    'oci-archive: %s that is a symlink to a file of the runner is refused, its content never read',
    async (_what, member) => {
      const dir = mkdtempSync(join(work, 'archive-'));
      mkdirSync(join(dir, 'blobs', 'sha256'), { recursive: true });
      writeFileSync(join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
      if (member !== 'index.json') writeFileSync(join(dir, 'index.json'), '{"manifests":[]}');
      symlinkSync(secret(), join(dir, member));
      const archive = join(work, `${Math.random().toString(36).slice(2)}.tar`);
      execFileSync('tar', ['-cf', archive, '-C', dir, '.']);
      const scratch = mkdtempSync(join(work, 'scratch-'));
      const failure = await openImageSource(
        { transport: 'oci-archive', location: archive },
        { scratch, timeoutMs: 30_000, log: () => undefined, tlsVerify: true },
      ).then(
        () => new Error('read'),
        (error: Error) => error,
      );
      expect(failure.message).toBe(
        `cannot read the source oci-archive:${archive}: the archive holds ${member}, a symlink; an OCI archive holds only files and directories.`,
      );
    },
  );

  it('a layout whose index.json is no JSON: the error does not quote it (it may be a link to any file)', async () => {
    const dir = mkdtempSync(join(work, 'layout-'));
    symlinkSync(secret(), join(dir, 'index.json'));
    const failure = await readOciLayout(dir).then(
      () => new Error('read'),
      (error: Error) => error,
    );
    expect(failure.message).toBe(`${dir} is not a readable OCI image layout (index.json is not JSON).`);
  });
});

/**
 * A broken engine cannot be made of dockerd: this one is a mock (an HTTP server on a unix socket, as DOCKER_HOST
 * names one), answering `GET /images/get` with what it is told.
 */
describe('docker-daemon: a mock engine that answers 200 with no image export', () => {
  /** The scratch dir of the last export. */
  let scratch = '';
  async function exportFrom(
    answer: (res: ServerResponse) => void,
    timeoutMs = 30_000,
    id = `sha256:${'1'.repeat(64)}`,
  ): Promise<string> {
    const dir = mkdtempSync(join(work, 'engine-'));
    scratch = dir;
    const socket = join(dir, 'docker.sock');
    // Which image x:1 is, answered as an engine does; the export is what the test is about.
    const server = createServer((req, res) =>
      req.url === '/images/x:1/json' ? res.writeHead(200).end(JSON.stringify({ Id: id })) : answer(res),
    );
    await new Promise<void>((resolve) => server.listen(socket, resolve));
    try {
      return await readDockerDaemonImage('x:1', {
        scratch: dir,
        timeoutMs,
        log: () => undefined,
        env: { DOCKER_HOST: `unix://${socket}` },
      }).then(
        () => 'read',
        (error: Error) => error.message,
      );
    } finally {
      server.closeAllConnections();
      server.close();
    }
  }

  it('an error page: no tar archive, said once, in one line whatever the export names', async () => {
    expect(
      await exportFrom((res) =>
        res.writeHead(200, { 'content-type': 'text/html' }).end('<html>oops</html>'.repeat(40)),
      ),
    ).toBe(
      'cannot read the source docker-daemon:x:1: the stream is not a tar archive (bad header checksum).',
    );
    const { config } = image();
    const hostile = Buffer.from(
      JSON.stringify([{ Config: 'c.json', Layers: ['\n::error::pwned\u202e\u001b[31m'] }]),
    );
    const said = await exportFrom((res) =>
      res
        .writeHead(200)
        .end(Buffer.concat([...file('c.json', config), ...file('manifest.json', hostile), END])),
    );
    expect(said).toMatch(
      /^cannot read the source docker-daemon:x:1: the export lacks {2}::error::pwned \[31m named in manifest\.json\.$/,
    );
  });

  it('an error answer whose body never ends: its start is quoted at once, the rest never read', async () => {
    const said = await exportFrom((res) => {
      res.writeHead(500);
      res.write('{"message":"engine trouble"}');
      const more = Buffer.alloc(64 * 1024, 0x20);
      const write = () => {
        while (res.write(more));
        res.once('drain', write);
      };
      write();
    }, 3000);
    expect(said).toBe(
      'cannot read the source docker-daemon:x:1: the Docker engine answered HTTP 500: engine trouble.',
    );
  });

  it('a connection dropped in the middle of a layer: said so, and no part of the layer is left', async () => {
    const said = await exportFrom((res) => {
      res
        .writeHead(200)
        .write(Buffer.concat([header('l/layer.tar', 1 << 20), header('f', 0), Buffer.alloc(100_000)]));
      setImmediate(() => res.socket!.destroy());
    });
    expect(said).toBe(
      'cannot read the source docker-daemon:x:1: the Docker engine closed the connection before the export ended (other side closed).',
    );
    expect(readdirSync(join(scratch, 'layout', 'blobs'))).toEqual(['sha256']);
    expect(readdirSync(join(scratch, 'layout', 'blobs', 'sha256'))).toEqual([]);
  });

  it('a body that stops coming fails at the export deadline, saying so', async () => {
    expect(
      await exportFrom((res) => {
        res.writeHead(200).write(header('l/layer.tar', 1 << 20));
      }, 1000),
    ).toBe("cannot read the source docker-daemon:x:1: the Docker engine's export did not end within 1.0 s.");
  });

  it('a gzip layer no manifest binds that inflates without end (a gzip bomb): its check stops at the export deadline', async () => {
    // 10 MB of gzip members of 64 MiB of zeros each: 10 GiB once inflated, where the export itself takes moments.
    const member = gzipSync(Buffer.alloc(64 * 1024 * 1024));
    const bomb = Buffer.concat(Array<Buffer>(160).fill(member));
    const { config, manifest } = image();
    const archive = exportOf(bomb, config, manifest);
    const said = await exportFrom((res) => res.writeHead(200).end(archive), 2000, sha(config));
    expect(said).toBe(
      "cannot read the source docker-daemon:x:1: layer 1 (l/layer.tar): decompressing it to check it against the config's diff_id did not end before the source's deadline.",
    );
  });
});

describe('dockerSaveToLayout: a gzip layer checked against its diff_id that is no valid gzip stream', () => {
  const gzipped = gzipSync(Buffer.concat([Buffer.alloc(1024), randomBytes(4000)]));
  it.each([
    ['cut short', gzipped.subarray(0, 2000), 'unexpected end of file'],
    // Go's gzip reader, which docker and containerd unpack layers with, refuses it too.
    [
      'followed by bytes that are no gzip member',
      Buffer.concat([gzipped, Buffer.from('trailing')]),
      'incorrect header check',
    ],
  ])("%s: the error names the layer, not only zlib's words", async (_what, layer, zlib) => {
    const { config, manifest } = image();
    const layoutDir = mkdtempSync(join(work, 'layout-'));
    await expect(
      dockerSaveToLayout(Readable.from([exportOf(layer, config, manifest)]), {
        layoutDir,
        compress: 'gzip',
        what: 'docker-daemon:x',
        imageId: sha(config),
      }),
    ).rejects.toThrow(`docker-daemon:x: layer 1 (l/layer.tar) is not a valid gzip stream (${zlib}).`);
  });
});
