/**
 * Podman 4's default image source: Fedora CoreOS stream metadata, in the shape builds.coreos.fedoraproject.org
 * publishes (coreos/stream-metadata-go `stream.Stream`), read as podman v4.9's GetFCOSDownload reads it.
 */
import { describe, expect, it } from '@jest/globals';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  fcosArtifact,
  resolveFcosDisk,
  selectFcosDisk,
} from '../../src/actions/preseed-podman-vm/fcos-stream.js';
import { InputError } from '../../src/core/inputs.js';
import { REPO_ROOT } from '../support/harness.js';
import { nodeTrusting } from '../support/node-trusting.js';
import { makeTestCa } from '../support/test-ca.js';

const sha = (n: number) => n.toString(16).padStart(64, '0');
const BASE = 'https://builds.coreos.fedoraproject.org/prod/streams/testing/builds/41.20261101.2.0';

function format(arch: string, artifact: string, ext: string, n: number) {
  const file = `fedora-coreos-41.20261101.2.0-${artifact}.${arch}.${ext}`;
  return {
    [ext]: {
      disk: {
        location: `${BASE}/${arch}/${file}`,
        signature: `${BASE}/${arch}/${file}.sig`,
        sha256: sha(n),
        'uncompressed-sha256': sha(n + 100),
      },
    },
  };
}

const stream = {
  stream: 'testing',
  metadata: { 'last-modified': '2026-11-20T12:00:00Z', generator: 'fedora-coreos-stream-generator v0.4.0' },
  architectures: {
    x86_64: {
      artifacts: {
        metal: { release: '41.20261101.2.0', formats: format('x86_64', 'metal', 'raw.xz', 1) },
        qemu: { release: '41.20261101.2.0', formats: format('x86_64', 'qemu', 'qcow2.xz', 2) },
        hyperv: { release: '41.20261101.2.0', formats: format('x86_64', 'hyperv', 'vhdx.zip', 3) },
        applehv: { release: '41.20261101.2.0', formats: format('x86_64', 'applehv', 'raw.gz', 4) },
      },
      images: { aws: { regions: {} } },
    },
    aarch64: {
      artifacts: {
        qemu: { release: '41.20261101.2.0', formats: format('aarch64', 'qemu', 'qcow2.xz', 5) },
        applehv: { release: '41.20261101.2.0', formats: format('aarch64', 'applehv', 'raw.gz', 6) },
      },
    },
  },
};

describe('Fedora CoreOS stream metadata (podman 4)', () => {
  it("picks each provider's artifact and format as podman 4.9 does", () => {
    expect(selectFcosDisk(stream, 'x86_64', 'qemu')).toEqual({
      location: `${BASE}/x86_64/fedora-coreos-41.20261101.2.0-qemu.x86_64.qcow2.xz`,
      sha256: sha(2),
      release: '41.20261101.2.0',
      title: 'fedora-coreos-41.20261101.2.0-qemu.x86_64.qcow2.xz',
    });
    expect(selectFcosDisk(stream, 'x86_64', 'hyperv').sha256).toBe(sha(3));
    expect(selectFcosDisk(stream, 'aarch64', 'applehv').title).toMatch(/applehv\.aarch64\.raw\.gz$/);
    expect(selectFcosDisk(stream, 'aarch64', 'qemu').sha256).toBe(sha(5));
  });

  it('says what is offered when the arch or provider is missing', () => {
    expect(() => selectFcosDisk(stream, 'aarch64', 'hyperv')).toThrow(
      'the stream has no aarch64/hyperv/vhdx.zip disk; it offers qemu, applehv',
    );
    expect(() => selectFcosDisk({ architectures: {} }, 'x86_64', 'qemu')).toThrow(/no x86_64 artifacts/);
    expect(() => selectFcosDisk('[]', 'x86_64', 'qemu')).toThrow(/no architectures/);
  });

  it('refuses hostile disk entries: bad checksum, other schemes, names that are not plain files', () => {
    const withDisk = (disk: Record<string, unknown>) => ({
      architectures: { x86_64: { artifacts: { qemu: { formats: { 'qcow2.xz': { disk } } } } } },
    });
    const ok = { location: 'https://h/x/f.qcow2.xz', sha256: sha(1) };
    expect(selectFcosDisk(withDisk(ok), 'x86_64', 'qemu').title).toBe('f.qcow2.xz');
    for (const bad of [
      { ...ok, sha256: 'ABC' },
      { ...ok, sha256: undefined },
      { ...ok, location: 'file:///etc/f.qcow2.xz' },
      { ...ok, location: 'https://h/x/..%2Ff.qcow2.xz' },
      { ...ok, location: 'https://h/x/' },
      { ...ok, location: 'https://h/x/f.qcow2' },
      { ...ok, location: 42 },
    ]) {
      expect(() => selectFcosDisk(withDisk(bad), 'x86_64', 'qemu')).toThrow(/qemu/);
    }
  });

  it('names what a stream offers in one short line, whatever its keys', () => {
    const artifacts = Object.fromEntries(
      Array.from({ length: 10_000 }, (_, i) => [`art\u001b[31m\u202e${i}\n::error::x`, {}]),
    );
    const error = (() => {
      try {
        selectFcosDisk({ architectures: { x86_64: { artifacts } } }, 'x86_64', 'qemu');
      } catch (e) {
        return (e as Error).message;
      }
      return undefined;
    })();
    expect(error).toMatch(/^the stream has no x86_64\/qemu\/qcow2\.xz disk; it offers art/);
    expect(error!.length).toBeLessThan(400);
    expect(error).not.toMatch(/[\p{Cc}\p{Cf}]/u);
  });

  it('keeps the release (a log line shows it) to one line of plain text', () => {
    const disk = { location: 'https://h/x/f.qcow2.xz', sha256: sha(1) };
    const hostile = {
      architectures: {
        x86_64: {
          artifacts: {
            qemu: { release: '41\u001b[2K\u202eevil\n::error::x', formats: { 'qcow2.xz': { disk } } },
          },
        },
      },
    };
    expect(selectFcosDisk(hostile, 'x86_64', 'qemu').release).toBe('41 [2Kevil ::error::x');
  });

  it('has no stream artifact for WSL (podman 4 uses an unversioned rootfs there) or libkrun (podman 5.2+)', () => {
    expect(() => fcosArtifact('wsl')).toThrow(InputError);
    expect(() => fcosArtifact('wsl')).toThrow(/without a published checksum/);
    expect(() => fcosArtifact('libkrun')).toThrow(/podman 5\.2/);
  });
});

describe('Fedora CoreOS stream metadata over HTTP', () => {
  it("sends a stream URL's user:password@ as Basic auth, and passes it on to a disk on that origin only", async () => {
    const seen: Array<string | undefined> = [];
    let diskHost = '';
    const server = createServer((req, res) => {
      seen.push(req.headers.authorization);
      const doc = JSON.parse(JSON.stringify(stream)) as typeof stream;
      const port = (server.address() as AddressInfo).port;
      doc.architectures.x86_64.artifacts.qemu.formats['qcow2.xz'].disk.location =
        `http://${diskHost}:${port}/d/fedora-coreos-qemu.x86_64.qcow2.xz`;
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(doc));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    try {
      diskHost = '127.0.0.1';
      const url = `http://bob:s3cr%40t@127.0.0.1:${port}/streams/testing.json`;
      const same = await resolveFcosDisk(url, 'x86_64', 'qemu');
      expect(seen).toEqual([`Basic ${Buffer.from('bob:s3cr@t').toString('base64')}`]);
      expect(same.location).toBe(
        `http://bob:s3cr%40t@127.0.0.1:${port}/d/fedora-coreos-qemu.x86_64.qcow2.xz`,
      );
      diskHost = 'localhost';
      const other = await resolveFcosDisk(url, 'x86_64', 'qemu');
      expect(other.location).toBe(`http://localhost:${port}/d/fedora-coreos-qemu.x86_64.qcow2.xz`);
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('stops reading a chunked body (no Content-Length) at 16 MiB instead of taking it whole', async () => {
    // Valid metadata behind 64 MiB of JSON whitespace, sent chunked: only a cap while reading refuses it.
    const padding = Buffer.alloc(1024 * 1024, 0x20);
    let sent = 0;
    const server = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      const more = () => {
        while (sent < 64 * padding.length) {
          sent += padding.length;
          if (!res.write(padding)) return void res.once('drain', more);
        }
        res.end(JSON.stringify(stream));
      };
      more();
    });
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/testing.json`;
      await expect(resolveFcosDisk(url, 'x86_64', 'qemu')).rejects.toThrow(
        `${url} is not stream metadata (over 16777216 bytes)`,
      );
      // The transfer was stopped: the server never got to send the rest.
      expect(sent).toBeLessThan(64 * padding.length);
    } finally {
      server.closeAllConnections();
      await new Promise((done) => server.close(done));
    }
  });

  // The stream is where the disk's sha256 comes from: over plain http it could be swapped on the way. The https
  // server needs a CA node trusts, which NODE_EXTRA_CA_CERTS sets only for a node started with it.
  it('refuses a redirect of the stream from https to plain http before the http URL is asked', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ici-unit-fcos-downgrade-'));
    const servers: Server[] = [];
    const listen = async (server: Server) => {
      servers.push(server);
      await new Promise<void>((ready) => server.listen(0, '127.0.0.1', ready));
      return (server.address() as AddressInfo).port;
    };
    try {
      let plainAsked = 0;
      const plainPort = await listen(
        createServer((_req, res) => {
          plainAsked++;
          res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(stream));
        }),
      );
      const target = `http://127.0.0.1:${plainPort}/streams/testing.json`;
      const ca = makeTestCa(dir);
      const tlsPort = await listen(
        createHttpsServer(
          { cert: readFileSync(ca.serverCert), key: readFileSync(ca.serverKey) },
          (_req, res) => res.writeHead(302, { location: target, 'content-length': 0 }).end(),
        ),
      );
      const url = `https://127.0.0.1:${tlsPort}/streams/testing.json`;
      const module = JSON.stringify(join(REPO_ROOT, 'lib/actions/preseed-podman-vm/fcos-stream.js'));
      const script = `import { resolveFcosDisk } from ${module};
        const said = await resolveFcosDisk(process.argv[1], 'x86_64', 'qemu').then(
          (disk) => 'resolved ' + disk.location, (e) => e.message);
        console.log(said);`;
      expect(await nodeTrusting(ca.caCert, script, [url])).toBe(
        `${url}: https://127.0.0.1:${tlsPort} redirected from https to plain http (http://127.0.0.1:${plainPort}); not followed.`,
      );
      expect(plainAsked).toBe(0);
    } finally {
      for (const server of servers) server.closeAllConnections();
      await Promise.all(servers.map((server) => new Promise((done) => server.close(done))));
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('says what went wrong when the stream cannot be fetched: a redirect loop, a refused connection', async () => {
    let requests = 0;
    const server = createServer((req, res) => {
      requests++;
      res.writeHead(302, { location: req.url }).end();
    });
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
    const port = (server.address() as AddressInfo).port;
    try {
      await expect(
        resolveFcosDisk(`http://127.0.0.1:${port}/testing.json`, 'x86_64', 'qemu'),
      ).rejects.toThrow(/redirect/i);
      expect(requests).toBeGreaterThan(0);
    } finally {
      server.closeAllConnections();
      await new Promise((done) => server.close(done));
    }
    // The port is free again: nothing listens there.
    await expect(resolveFcosDisk(`http://127.0.0.1:${port}/testing.json`, 'x86_64', 'qemu')).rejects.toThrow(
      /ECONNREFUSED/,
    );
  });
});
