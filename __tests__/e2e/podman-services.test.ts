import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exec } from '../../src/core/exec.js';
import { mountPointsUnder } from '../../src/actions/remote-build-env/mounts.js';
import { identify, isRunning } from '../../src/actions/remote-build-env/process-group.js';
import { importBusyboxImage } from '../support/images.js';
import { pathExists } from '../../src/core/files.js';
import { createPodmanTestEnv, type PodmanTestEnv } from '../support/podman.js';
import { buildahCacheDir, mountsUnder, podmanVersions, requireAvailable } from '../support/podman-matrix.js';

describe.each(podmanVersions())(
  '[$label] podman test setup (test-only containers.conf, storage in a temp dir) and the busybox image',
  (podman) => {
    let pm: PodmanTestEnv;

    beforeAll(async () => {
      requireAvailable(podman);
      pm = await createPodmanTestEnv(podman);
    });
    afterAll(async () => {
      await pm?.remove();
    });

    it('keeps storage in the temp dir and runs the imported busybox image with runc', async () => {
      const image = await importBusyboxImage(pm);
      const info = await pm.podman(['info', '--format', '{{.Store.GraphRoot}} {{.Host.OCIRuntime.Name}}']);
      expect(info.stdout.trim()).toBe(`${pm.dir}/storage runc`);
      const r = await pm.podman(['run', '--rm', image, 'sh', '-c', 'echo from-busybox; ls /bin/ls']);
      expect(r.stdout).toBe('from-busybox\n/bin/ls\n');
    });

    it('starts a service, imports through it and builds with a cache mount that lands in its TMPDIR', async () => {
      const svc = await pm.startService({ name: 'proof' });
      const image = await importBusyboxImage(pm, { url: svc.url, name: 'localhost/ici-bb-remote:latest' });
      const ctx = join(pm.dir, 'ctx-proof');
      await mkdir(ctx);
      await writeFile(
        join(ctx, 'Containerfile'),
        `FROM ${image}\nRUN --mount=type=cache,target=/c echo hello > /c/marker && ls /c\n`,
      );
      const build = await pm.remote(svc.url, ['build', '--no-cache', '-t', 'localhost/proof:1', ctx]);
      expect(build.stdout).toContain('marker');
      const cacheDir = buildahCacheDir(podman, svc.tmpdir);
      const cacheDirs = await readdir(cacheDir);
      expect(cacheDirs.length).toBe(1);
      expect(await readFile(join(cacheDir, cacheDirs[0]!, 'marker'), 'utf8')).toBe('hello\n');

      const identity = await identify(svc.pid);
      expect(await isRunning(identity)).toBe(true);
      await svc.stop();
      expect(await isRunning(identity)).toBe(false);
      expect(await pathExists(svc.socket)).toBe(false);
    });

    it('remove() undoes mounts left in the storage dir (as overlay does) and deletes the dir', async () => {
      const other = await createPodmanTestEnv(podman);
      try {
        const image = await importBusyboxImage(other);
        await other.podman(['run', '--rm', image, 'true']);
        // Podman's overlay driver bind-mounts <graphroot>/overlay onto itself at times (seen after a killed
        // service); make that state on purpose so the cleanup path is exercised every run.
        const overlay = join(other.dir, 'storage', 'overlay');
        await exec('mount', ['--bind', overlay, overlay], { timeoutMs: 10_000 });
        expect(mountPointsUnder(await readFile('/proc/self/mountinfo', 'utf8'), other.dir)).toEqual([
          overlay,
        ]);
      } finally {
        await other.remove();
      }
      expect(mountsUnder(podman, other.dir)).toEqual([]);
      expect(await pathExists(other.dir)).toBe(false);
    });
  },
);
