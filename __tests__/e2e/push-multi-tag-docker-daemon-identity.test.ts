/**
 * A `docker-daemon:` source pushes exactly the image its name was when the step started: the real podman Docker
 * API service (`podman system service`, which names `app:build` `localhost/app:build`), a real docker-registry,
 * and, for what an engine cannot be made to do on cue, a relay on the engine's socket (startEngineRelay) that
 * re-tags the image mid-step or asks the engine for another image, or two, in the action's place.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runAction } from '../support/harness.js';
import { startEngineRelay } from '../support/docker-engine.js';
import { generateLayout } from '../support/oci-layout.js';
import { createPodmanTestEnv, type PodmanTestEnv, type TestPodmanService } from '../support/podman.js';
import { startRegistry, type RegistryService } from '../support/registry.js';

function skopeo(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('skopeo', args, { encoding: 'utf8', timeout: 120_000, env }, (error, stdout, stderr) =>
      error ? reject(new Error(`skopeo ${args.join(' ')}: ${stderr}`)) : resolve(stdout),
    );
  });
}

describe('push-multi-tag from docker-daemon: the image the name was, by its ID (real podman Docker API service, real docker-registry)', () => {
  let work: string;
  let podman: PodmanTestEnv;
  let service: TestPodmanService;
  let registry: RegistryService;
  /** The engine's IDs (their config digests) of the image named app:build, and of another one. */
  let built: string;
  let other: string;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'ici-dki-'));
    const a = generateLayout(join(work, 'a'), { layers: [20_000] });
    const b = generateLayout(join(work, 'b'), { layers: [30_000] });
    built = a.blobs.find((blob) => blob.mediaType.includes('config'))!.digest;
    other = b.blobs.find((blob) => blob.mediaType.includes('config'))!.digest;
    [podman, registry] = await Promise.all([createPodmanTestEnv(), startRegistry()]);
    const env = { ...process.env, ...podman.env };
    // Unqualified, as a user builds it: podman keeps it as localhost/app:build.
    await skopeo(['copy', '--quiet', a.transportRef, 'containers-storage:localhost/app:build'], env);
    await skopeo(['copy', '--quiet', b.transportRef, 'containers-storage:localhost/other:1'], env);
    service = await podman.startService();
  }, 120_000);

  afterAll(async () => {
    await Promise.all([podman?.remove(), registry?.stop()]);
    rmSync(work, { recursive: true, force: true });
  });

  const push = (dockerHost: string, repository: string) =>
    runAction({
      action: 'push-multi-tag',
      inputs: {
        source: 'docker-daemon:app:build',
        repositories: `${registry.host}/${repository}`,
        tags: 'v1',
        'insecure-registries': registry.host,
      },
      env: { DOCKER_HOST: dockerHost },
    });

  const pushedConfig = async (ref: string): Promise<string> =>
    (
      JSON.parse(
        await skopeo(['inspect', '--raw', '--tls-verify=false', `docker://${registry.host}/${ref}`]),
      ) as { config: { digest: string } }
    ).config.digest;

  it('app:build (podman answers localhost/app:build): pushed by its ID, which the log and the summary name', async () => {
    const r = await push(service.url, 'id/plain');
    expect(r.errors).toEqual([]);
    expect(r.log).toContain(`app:build is the engine's image ${built}; exporting that image by its ID`);
    expect(r.main.summary).toContain(
      `Source: \`docker-daemon:app:build\`, the Docker engine's image \`${built}\`.`,
    );
    expect(await pushedConfig('id/plain:v1')).toBe(built);
  });

  it('the tag moved to another image between the ID lookup and the export (relay re-tags): the image it named is pushed', async () => {
    await podman.podman(['tag', 'localhost/app:build', 'localhost/app:keep']);
    let moved = false;
    const relay = await startEngineRelay(service.url, async (path) => {
      if (path.startsWith('/images/get') && !moved) {
        moved = true;
        await podman.podman(['tag', 'localhost/other:1', 'localhost/app:build']);
      }
    });
    try {
      const r = await push(relay.host, 'id/moved');
      expect(moved).toBe(true);
      expect(r.errors).toEqual([]);
      expect(await pushedConfig('id/moved:v1')).toBe(built);
    } finally {
      await relay.stop();
      await podman.podman(['tag', 'localhost/app:keep', 'localhost/app:build']);
    }
  });

  it('an engine that exports another image than the one asked for (relay asks for it instead): refused naming both IDs, nothing pushed', async () => {
    const relay = await startEngineRelay(service.url, (path) =>
      path.startsWith('/images/get') ? `/images/get?names=${other}` : undefined,
    );
    try {
      const r = await push(relay.host, 'id/swapped');
      expect(r.main.exitCode).toBe(1);
      expect(r.errors).toEqual([
        `push-multi-tag failed: cannot read the source docker-daemon:app:build: the export is image ${other}, not ${built}, the image asked for.`,
      ]);
      await expect(pushedConfig('id/swapped:v1')).rejects.toThrow(/manifest unknown|not found/i);
    } finally {
      await relay.stop();
    }
  });

  it('an engine whose answer for the name holds no image ID (relay answers /_ping instead): one line, nothing exported', async () => {
    const relay = await startEngineRelay(service.url, (path) =>
      path.endsWith('/json') ? '/_ping' : undefined,
    );
    try {
      const r = await push(relay.host, 'id/no-id');
      expect(r.errors).toEqual([
        "push-multi-tag failed: cannot read the source docker-daemon:app:build: the Docker engine's answer for app:build (GET /images/…/json) names no image ID (sha256:<64 hex>): OK.",
      ]);
      expect(relay.paths.some((p) => p.startsWith('/images/get'))).toBe(false);
    } finally {
      await relay.stop();
    }
  });

  it('an export holding two images where one was asked for (relay adds a second name): refused naming each ID', async () => {
    const relay = await startEngineRelay(service.url, (path) =>
      path.startsWith('/images/get') ? `${path}&names=${other}` : undefined,
    );
    try {
      const r = await push(relay.host, 'id/two');
      expect(r.main.exitCode).toBe(1);
      expect(r.errors).toEqual([
        `push-multi-tag failed: cannot read the source docker-daemon:app:build: the export holds 2 images (${built}, ${other}) where ${built} was asked for; expected one.`,
      ]);
    } finally {
      await relay.stop();
    }
  });
});
