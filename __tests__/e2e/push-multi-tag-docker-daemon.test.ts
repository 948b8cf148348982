/**
 * A `docker-daemon:` source against a real Docker engine (Debian's docker.io 20.10, started by the test on a
 * private socket; DOCKER_HOST points the action at it). The image gets there with `docker load` of a
 * docker-archive built locally from a generated layout: no network.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runAction } from '../support/harness.js';
import { startDockerEngine, type DockerEngineService } from '../support/docker-engine.js';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { startRegistry, type RegistryService } from '../support/registry.js';

function skopeo(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('skopeo', args, { encoding: 'utf8', timeout: 120_000 }, (error, stdout, stderr) =>
      error ? reject(new Error(`skopeo ${args.join(' ')}: ${stderr}`)) : resolve(stdout),
    );
  });
}

interface RawManifest {
  config: { digest: string };
  layers: { digest: string; mediaType: string }[];
}

describe('push-multi-tag from docker-daemon: (real Docker engine, real docker-registry)', () => {
  let work: string;
  let layout: GeneratedLayout;
  let engine: DockerEngineService;
  let registry: RegistryService;
  let imageId: string;
  let diffIds: string[];

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'ici-daemon-'));
    layout = generateLayout(join(work, 'layout'), { layers: [400_000, 5_000_000, 2_000] });
    [engine, registry] = await Promise.all([startDockerEngine(), startRegistry()]);
    const archive = join(work, 'image.tar');
    await skopeo(['copy', '--quiet', layout.transportRef, `docker-archive:${archive}:localhost/ici/app:v1`]);
    await engine.docker(['load', '-i', archive]);
    imageId = (
      await engine.docker(['image', 'inspect', '--format', '{{.Id}}', 'localhost/ici/app:v1'])
    ).stdout.trim();
    diffIds = JSON.parse(
      (
        await engine.docker([
          'image',
          'inspect',
          '--format',
          '{{json .RootFS.Layers}}',
          'localhost/ici/app:v1',
        ])
      ).stdout,
    ) as string[];
  }, 180_000);

  afterAll(async () => {
    await Promise.all([engine?.stop(), registry?.stop()]);
    rmSync(work, { recursive: true, force: true });
  });

  const push = (
    source: string,
    repository: string,
    extra: Record<string, string> = {},
    env: Record<string, string | undefined> = {},
  ) =>
    runAction({
      action: 'push-multi-tag',
      inputs: {
        source,
        repositories: `${registry.host}/${repository}`,
        tags: 'v1, latest',
        'insecure-registries': registry.host,
        ...extra,
      },
      env: { DOCKER_HOST: engine.host, ...env },
    });

  const remote = async (ref: string): Promise<RawManifest> =>
    JSON.parse(
      await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/${ref}`]),
    ) as RawManifest;

  it('exports the image once from the engine (DOCKER_HOST) and pushes it: same config (image ID), same layers, gzip', async () => {
    const r = await push('docker-daemon:localhost/ici/app:v1', 'daemon/app');
    expect(r.errors).toEqual([]);
    expect(r.main.exitCode).toBe(0);
    expect(r.log).toContain(
      `Exporting localhost/ici/app:v1 from the Docker engine at ${engine.host} (DOCKER_HOST)`,
    );
    expect(r.log).toContain(
      `localhost/ici/app:v1 is the engine's image ${imageId}; exporting that image by its ID`,
    );
    const manifest = await remote('daemon/app:latest');
    expect(manifest.config.digest).toBe(imageId);
    expect(manifest.layers.map((l) => l.mediaType)).toEqual(
      diffIds.map(() => 'application/vnd.oci.image.layer.v1.tar+gzip'),
    );
    // The config names the layers by their uncompressed digests: the pushed image is the engine's image.
    const config = JSON.parse(
      await skopeo(['inspect', '--config', '--tls-verify=false', `docker://${registry.host}/daemon/app:v1`]),
    ) as { rootfs: { diff_ids: string[] } };
    expect(config.rootfs.diff_ids).toEqual(diffIds);
    // skopeo can read it back whole (every blob verified against its digest).
    await skopeo([
      'copy',
      '--quiet',
      '--src-tls-verify=false',
      `docker://${registry.host}/daemon/app:v1`,
      `oci:${join(work, 'back')}:x`,
    ]);
  });

  it('compression: zstd gives zstd layers', async () => {
    const r = await push('docker-daemon:localhost/ici/app:v1', 'daemon/zstd', { compression: 'zstd' });
    expect(r.errors).toEqual([]);
    const manifest = await remote('daemon/zstd:v1');
    expect(new Set(manifest.layers.map((l) => l.mediaType))).toEqual(
      new Set(['application/vnd.oci.image.layer.v1.tar+zstd']),
    );
    expect(manifest.config.digest).toBe(imageId);
  });

  it('an image the engine does not have, an engine that is not there, an engine address it cannot use: one line each', async () => {
    const missing = await push('docker-daemon:localhost/ici/nope:1', 'daemon/none');
    expect(missing.main.exitCode).toBe(1);
    expect(missing.errors).toHaveLength(1);
    expect(missing.errors[0]).toMatch(
      /cannot read the source docker-daemon:localhost\/ici\/nope:1: the Docker engine has no image localhost\/ici\/nope:1 \(.+\); build or pull it first\./,
    );

    const nowhere = `unix://${join(work, 'no-such.sock')}`;
    const absent = await push(
      'docker-daemon:localhost/ici/app:v1',
      'daemon/none',
      {},
      { DOCKER_HOST: nowhere },
    );
    expect(absent.errors[0]).toContain(
      `no Docker engine answers at ${nowhere} (DOCKER_HOST); start it, or set DOCKER_HOST`,
    );

    const ssh = await push(
      'docker-daemon:localhost/ici/app:v1',
      'daemon/none',
      {},
      { DOCKER_HOST: 'ssh://ci@build-host' },
    );
    expect(ssh.errors[0]).toContain(
      'docker-daemon: ssh://… (DOCKER_HOST) is not supported (only unix:// and tcp://)',
    );
  });

  it('without DOCKER_HOST, the docker context the docker CLI would use (currentContext in $DOCKER_CONFIG/config.json)', async () => {
    const config = join(work, 'docker-config');
    const meta = join(config, 'contexts', 'meta', createHash('sha256').update('ici-test').digest('hex'));
    mkdirSync(meta, { recursive: true });
    writeFileSync(join(config, 'config.json'), JSON.stringify({ currentContext: 'ici-test' }));
    writeFileSync(
      join(meta, 'meta.json'),
      JSON.stringify({
        Name: 'ici-test',
        Metadata: {},
        Endpoints: { docker: { Host: engine.host, SkipTLSVerify: false } },
      }),
    );
    const r = await push(
      'docker-daemon:localhost/ici/app:v1',
      'daemon/context',
      {},
      { DOCKER_HOST: undefined, DOCKER_CONFIG: config },
    );
    expect(r.errors).toEqual([]);
    expect(r.log).toContain(`from the Docker engine at ${engine.host} (docker context ici-test)`);
    expect((await remote('daemon/context:v1')).config.digest).toBe(imageId);
  });
});
