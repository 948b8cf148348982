import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runAction } from '../support/harness.js';
import { generateLayout } from '../support/oci-layout.js';
import { createPodmanTestEnv, type PodmanTestEnv, type TestPodmanService } from '../support/podman.js';
import { startRegistry, type RegistryService } from '../support/registry.js';
import { tempDirForFile } from '../support/run-dir.js';
import { exec } from '../../src/core/exec.js';

/**
 * Manifest lists in containers-storage with the host's podman (4.3): the lists exported whole were tested with
 * podman 5 only (push-multi-tag-podman5-rootless.test.ts).
 */
describe('push-multi-tag: a podman manifest list (host podman 4.3, real docker-registry)', () => {
  let registry: RegistryService;
  let podman: PodmanTestEnv;
  let service: TestPodmanService;

  beforeAll(async () => {
    registry = await startRegistry();
    podman = await createPodmanTestEnv();
    const layout = generateLayout(join(tempDirForFile('ici-pml-'), 'layout'), { layers: [2_000] });
    await exec('skopeo', ['copy', '--quiet', layout.transportRef, 'containers-storage:localhost/pml/app:1'], {
      timeoutMs: 60_000,
      env: { ...process.env, ...podman.env },
    });
    await podman.podman(['manifest', 'create', 'localhost/pml/list:1']);
    await podman.podman([
      'manifest',
      'add',
      'localhost/pml/list:1',
      'containers-storage:localhost/pml/app:1',
    ]);
    service = await podman.startService();
  });
  afterAll(async () => {
    await podman?.remove();
    await registry?.stop();
  });

  const push = (repository: string, env: Record<string, string>, source = 'localhost/pml/list:1') =>
    runAction({
      action: 'push-multi-tag',
      inputs: {
        source,
        repositories: `${registry.host}/${repository}`,
        tags: 'one',
        'insecure-registries': registry.host,
      },
      env,
    });

  // `podman --url … save` of a list's name wrote the service's own platform's image alone, which was pushed as
  // if it were the list: one architecture of `podman --remote build --platform a,b --manifest app`, silently.
  it('a manifest list in the storage of a podman service (CONTAINER_HOST) is refused, not pushed as one of its images', async () => {
    // The action's own process sees an empty local storage: only the service has the list.
    const empty = tempDirForFile('ici-pml-empty-');
    const storageConf = join(empty, 'storage.conf');
    writeFileSync(
      storageConf,
      `[storage]\ndriver = "vfs"\ngraphroot = "${empty}/graph"\nrunroot = "${empty}/run"\n`,
    );
    const r = await push('lists/remote', {
      ...podman.env,
      CONTAINERS_STORAGE_CONF: storageConf,
      CONTAINER_HOST: service.url,
    });
    expect(r.main.exitCode).not.toBe(0);
    expect(r.errors.join('\n')).toMatch(
      /Input 'source': localhost\/pml\/list:1 is a manifest list in the storage of the podman service at .*: a podman service exports one image of a list, not the list/,
    );
    const tags = await fetch(`http://${registry.host}/v2/lists/remote/tags/list`);
    expect(tags.status).toBe(404);
  });

  it('a manifest list in local storage is pushed whole, as the index it is, with podman 4.3', async () => {
    const r = await push('lists/local', podman.env);
    expect(r.errors).toEqual([]);
    expect(r.log).toContain('is a manifest list in local storage: exporting it and all its images');
    const index = await fetch(`http://${registry.host}/v2/lists/local/manifests/one`, {
      headers: {
        accept:
          'application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json',
      },
    });
    const body = (await index.json()) as { manifests?: unknown[] };
    expect(body.manifests).toHaveLength(1);
  });

  // `podman manifest add app docker://…` records a reference, not the image: `manifest push --all` reads it from
  // that registry, here over https from one that speaks http. podman's error begins with the storage's paths and
  // the list's ID, and the step's line was cut before the cause ("… pinging container registry 127.0.0.1:3900…").
  it('a list whose image is not in local storage and cannot be read from where it came: the error names that image and why', async () => {
    const layout = generateLayout(join(tempDirForFile('ici-pml-src-'), 'layout'), { layers: [1_000] });
    await exec(
      'skopeo',
      [
        'copy',
        '--quiet',
        '--dest-tls-verify=false',
        layout.transportRef,
        `docker://${registry.host}/lists/src:1`,
      ],
      { timeoutMs: 60_000 },
    );
    await podman.podman(['manifest', 'create', 'localhost/pml/refers:1']);
    await podman.podman([
      'manifest',
      'add',
      '--tls-verify=false',
      'localhost/pml/refers:1',
      `docker://${registry.host}/lists/src:1`,
    ]);
    const r = await push('lists/refers', podman.env, 'localhost/pml/refers:1');
    expect(r.main.exitCode).not.toBe(0);
    expect(r.errors.join('\n')).toMatch(
      new RegExp(
        `cannot read the source containers-storage:localhost/pml/refers:1: an image of the manifest list is not in local storage, and podman could not read it from docker://${registry.host}/lists/src:1, where the list says it came from \\(podman: .*server gave HTTP response to HTTPS client`,
      ),
    );
  });
});
