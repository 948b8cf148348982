/**
 * A real simplestreams client reads the pruned repository: Debian's lxd-client (`lxc`, no daemon needed) lists
 * the images over https and exports one, which downloads its files and checks their sha256. `lxc` accepts only
 * https remotes, so the repository is served by a local https server whose test CA is handed to the client
 * through SSL_CERT_FILE. Skipped when `lxc` is not installed (apt package lxd-client).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFile,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exec } from '../../src/core/exec.js';
import { REPO_ROOT } from '../support/harness.js';
import { readImages, SimplestreamsRepo } from '../support/simplestreams-fixture.js';

const hasLxc = spawnSync('lxc', ['--version'], { timeout: 10_000 }).status === 0;
const base = mkdtempSync(join(tmpdir(), 'ici-prune-lxc-'));
let server: Server | undefined;
let url = '';
const repoRoot = join(base, 'repo');

function run(cmd: string, args: string[]) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

/** A CA and a server certificate for 127.0.0.1, made with openssl. */
function makeCertificates(dir: string): { key: string; cert: string; ca: string } {
  const p = (f: string) => join(dir, f);
  run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    p('ca.key'),
    '-out',
    p('ca.pem'),
    '-days',
    '2',
    '-subj',
    '/CN=ici-test-ca',
  ]);
  run('openssl', [
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    p('srv.key'),
    '-out',
    p('srv.csr'),
    '-subj',
    '/CN=127.0.0.1',
  ]);
  writeFileSync(p('ext'), 'subjectAltName=IP:127.0.0.1\n');
  run('openssl', [
    'x509',
    '-req',
    '-in',
    p('srv.csr'),
    '-CA',
    p('ca.pem'),
    '-CAkey',
    p('ca.key'),
    '-CAcreateserial',
    '-out',
    p('srv.pem'),
    '-days',
    '2',
    '-extfile',
    p('ext'),
  ]);
  return { key: p('srv.key'), cert: p('srv.pem'), ca: p('ca.pem') };
}

/**
 * Runs lxc without blocking the event loop (the https server lives in this process), with a fresh client
 * config each time: the lxc CLI caches a remote's images.json for minutes.
 */
async function lxc(args: string[]): Promise<string> {
  const env = {
    ...process.env,
    LXD_CONF: mkdtempSync(join(base, 'lxd-conf-')),
    SSL_CERT_FILE: join(base, 'certs/ca.pem'),
  };
  await exec('lxc', ['remote', 'add', 'repo', url, '--protocol=simplestreams'], { env, timeoutMs: 60_000 });
  return (await exec('lxc', args, { env, timeoutMs: 60_000 })).stdout;
}

/** `lxc image list` rows as "os version type", e.g. "debian 20240401_01:00 CONTAINER". */
async function listed(): Promise<string[]> {
  return (await lxc(['image', 'list', 'repo:', '--format', 'csv', '-c', 'dt']))
    .trim()
    .split('\n')
    .map((line) => {
      const m = /^(\S+) .*\((\d{8}_\d\d:\d\d)\),(\S+)$/.exec(line);
      if (!m) throw new Error(`unexpected lxc output line: ${line}`);
      return `${m[1]} ${m[2]} ${m[3]}`;
    })
    .sort();
}

const describeWithLxc = hasLxc ? describe : describe.skip;

describeWithLxc('a real LXD client (lxd-client) reads the pruned repository', () => {
  beforeAll(async () => {
    const repo = new SimplestreamsRepo(repoRoot, 'nested');
    let previous: string | undefined;
    for (const v of ['20240101_01:00', '20240201_01:00', '20240301_01:00', '20240401_01:00']) {
      repo.addVersion('debian:bookworm:default:amd64', v, { vm: true, sidecars: true, deltaFrom: previous });
      previous = v;
    }
    repo.addVersion('alpine:3.19:default:amd64', '20240101_01:00');
    repo.addVersion('alpine:3.19:default:amd64', '20240201_01:00', { broken: true });
    repo.write();
    mkdirSync(join(base, 'certs'));
    const certs = makeCertificates(join(base, 'certs'));
    server = createServer({ key: readFileSync(certs.key), cert: readFileSync(certs.cert) }, (req, res) => {
      const path = decodeURIComponent(new URL(req.url ?? '/', 'https://x').pathname);
      readFile(join(repoRoot, path), (error, data) => {
        res.writeHead(error ? 404 : 200);
        res.end(error ? undefined : data);
      });
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await new Promise((resolve) => server?.close(resolve));
  });

  it('lists only the kept versions after a prune and downloads a kept image with matching sha256', async () => {
    const before = await listed();
    expect(before).toContain('debian 20240101_01:00 CONTAINER');
    expect(before).toContain('alpine 20240201_01:00 CONTAINER');

    const prune = spawnSync(
      process.execPath,
      [
        join(REPO_ROOT, 'dist/cli.js'),
        'prune-simplestreams',
        '--path',
        repoRoot,
        '--keep-versions',
        '2',
        '--grace-period',
        '0s',
      ],
      { encoding: 'utf8', timeout: 60_000 },
    );
    expect(`${prune.status} ${prune.stderr}`).toMatch(/^0 /);
    expect(await listed()).toEqual([
      'alpine 20240101_01:00 CONTAINER',
      'debian 20240301_01:00 CONTAINER',
      'debian 20240301_01:00 VIRTUAL-MACHINE',
      'debian 20240401_01:00 CONTAINER',
      'debian 20240401_01:00 VIRTUAL-MACHINE',
    ]);

    type Item = { combined_squashfs_sha256?: string };
    const products = readImages(repoRoot).products as Record<
      string,
      { versions: Record<string, { items: Record<string, Item> }> }
    >;
    const fingerprint =
      products['debian:bookworm:default:amd64']!.versions['20240301_01:00']!.items['lxd.tar.xz']!
        .combined_squashfs_sha256!;
    const out = join(base, 'export');
    mkdirSync(out);
    await lxc(['image', 'export', `repo:${fingerprint}`, out]);
    expect(readdirSync(out).length).toBe(2); // metadata tarball + rootfs, both sha256-checked by the client
    expect(existsSync(join(repoRoot, 'images/debian/bookworm/amd64/default/20240101_01:00'))).toBe(false);
  });
});

afterAll(() => rmSync(base, { recursive: true, force: true }));
