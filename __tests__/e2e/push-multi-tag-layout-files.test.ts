/**
 * An OCI layout is content from outside (a build step, a downloaded artifact): a manifest, an index.json or a
 * referrer in it that is a FIFO or a device must fail the push at once, naming the file, before any tag moves.
 * Reading one whole used to wait forever for a writer that never comes. Real docker-registry as destination.
 * An oci-archive's directory of mode 0000 must not outlive the step on a runner that is not root.
 */
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { execFileSync, spawn } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  cpSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RegistryClient } from '../../src/core/oci/client.js';
import { blobPath } from '../../src/core/oci/layout.js';
import { OCI_MANIFEST, referrer, sha256 } from '../support/artifacts.js';
import { REPO_ROOT, runAction } from '../support/harness.js';
import { generateLayout } from '../support/oci-layout.js';
import { startRegistry, type RegistryService } from '../support/registry.js';

let work: string;
let dest: RegistryService;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'ici-layout-files-'));
  dest = await startRegistry();
});
afterAll(async () => {
  await dest.stop();
  rmSync(work, { recursive: true, force: true });
});

const push = (source: string, repository: string) =>
  runAction({
    action: 'push-multi-tag',
    inputs: { source, repositories: `${dest.host}/${repository}`, tags: 'v1', 'tls-verify': 'false' },
    timeoutMs: 60_000,
  });

async function tagged(repository: string): Promise<boolean> {
  const client = new RegistryClient({ registry: dest.host, insecure: true });
  try {
    return (await client.headManifest(repository, 'v1')) !== undefined;
  } finally {
    await client.close();
  }
}

it('a FIFO in place of the image manifest fails the push at once, naming it', async () => {
  const layout = generateLayout(join(work, 'manifest'), { layers: [1000] });
  const manifest = blobPath(layout.dir, layout.digest);
  rmSync(manifest);
  execFileSync('mkfifo', [manifest]);
  const r = await push(layout.transportRef, 'fifo/manifest');
  expect(r.main.exitCode).toBe(1);
  expect(r.errors.join('\n')).toContain(`cannot read ${manifest}: not a regular file.`);
  expect(await tagged('fifo/manifest')).toBe(false);
});

it('a referrer in the layout that is a FIFO fails the push before any tag moves, naming it', async () => {
  const layout = generateLayout(join(work, 'referrer'), { layers: [1000] });
  const subject = {
    mediaType: OCI_MANIFEST,
    digest: layout.digest,
    size: readFileSync(blobPath(layout.dir, layout.digest)).length,
  };
  const sbom = referrer(subject, 'application/spdx+json', '{"spdxVersion":"SPDX-2.3"}');
  for (const blob of sbom.blobs) writeFileSync(blobPath(layout.dir, sha256(blob)), blob);
  const sbomFile = blobPath(layout.dir, sbom.digest);
  execFileSync('mkfifo', [sbomFile]);
  const indexPath = join(layout.dir, 'index.json');
  const index = JSON.parse(readFileSync(indexPath, 'utf8')) as { manifests: object[] };
  index.manifests.push({ mediaType: OCI_MANIFEST, digest: sbom.digest, size: sbom.bytes.length });
  writeFileSync(indexPath, JSON.stringify(index));

  const r = await push(layout.transportRef, 'fifo/referrer');
  expect(r.main.exitCode).toBe(1);
  expect(r.errors.join('\n')).toContain(`cannot read ${sbomFile}: not a regular file.`);
  expect(await tagged('fifo/referrer')).toBe(false);
});

it('an oci-archive with a directory of mode 0000, read by a runner that is not root: the real error, and nothing left', async () => {
  // GitHub's runners are not root: tar gives the directory the archive's mode, and then neither main nor post could
  // read or remove it. The CLI runs as nobody, from a copy of dist/ it can read.
  const dir = mkdtempSync(join(work, 'locked-'));
  mkdirSync(join(dir, 'locked'));
  writeFileSync(join(dir, 'locked', 'f'), 'x');
  writeFileSync(join(dir, 'index.json'), '{"schemaVersion":2,"manifests":[]}');
  chmodSync(join(dir, 'locked'), 0o000);
  const home = mkdtempSync(join(tmpdir(), 'ici-nobody-'));
  chmodSync(home, 0o755);
  const archive = join(home, 'locked.tar');
  execFileSync('tar', ['-cf', archive, '-C', dir, 'locked', 'index.json']);
  cpSync(join(REPO_ROOT, 'dist'), join(home, 'dist'), { recursive: true });
  const runnerTemp = join(home, 'runner-temp');
  mkdirSync(runnerTemp);
  chownSync(runnerTemp, 65534, 65534);
  try {
    const cli = spawn(
      process.execPath,
      [
        join(home, 'dist', 'cli.js'),
        'push-multi-tag',
        '--source',
        `oci-archive:${archive}`,
        '--repositories',
        `${dest.host}/locked`,
        '--tags',
        'v1',
        '--tls-verify=false',
      ],
      {
        uid: 65534,
        gid: 65534,
        cwd: home,
        env: { PATH: process.env.PATH, HOME: home, RUNNER_TEMP: runnerTemp },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let output = '';
    cli.stdout.on('data', (c: Buffer) => (output += c.toString()));
    cli.stderr.on('data', (c: Buffer) => (output += c.toString()));
    const code = await new Promise((resolve) => cli.on('close', resolve));
    expect(code).toBe(1);
    expect(output).toMatch(/error: push-multi-tag failed: the OCI layout \S+ holds 0 images/);
    expect(output).not.toContain('EACCES');
    expect(readdirSync(runnerTemp)).toEqual([]);
  } finally {
    execFileSync('chmod', ['-R', 'u+rwx', home]);
    rmSync(home, { recursive: true, force: true });
  }
});
