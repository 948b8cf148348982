/**
 * push-multi-tag as a podman 5 user runs it: main and post as an ordinary user whose ROOTLESS podman 5.4 (the
 * trixie root's) built the image into its own storage, logged in with `podman login` in each runtime-dir
 * situation a runner's user meets, and printed its cgroups-v1 deprecation warnings (left on, as such a host shows
 * them). The root is entered by pivot_root, not chroot: the kernel makes no user namespace for a chrooted process.
 * The root has no skopeo, as a Debian podman 5 install has none (podman does not pull it in): every push here
 * exports the image with `podman save`.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { chownSync, mkdtempSync } from 'node:fs';
import { chown, mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pauseProcess } from '../../src/actions/remote-build-env/local-service.js';
import { stopProcess } from '../../src/actions/remote-build-env/process-group.js';
import { importBusyboxImage } from '../support/images.js';
import { leftovers } from '../support/leftovers.js';
import { createPodmanTestEnv, type PodmanTestEnv } from '../support/podman.js';
import {
  podmanVersions,
  requireAvailable,
  stepScripts,
  testUser,
  type User,
} from '../support/podman-matrix.js';
import { startRegistry, type RegistryService } from '../support/registry.js';
import { startSplitJob, type SplitJob } from '../support/split-job.js';

const ACTION = 'push-multi-tag';

describe.each(podmanVersions().filter((v) => v.root !== '/'))(
  '[$label] push-multi-tag as an ordinary user with rootless podman 5 and no skopeo',
  (podman) => {
    let user: User;
    let pm: PodmanTestEnv;
    let registry: RegistryService;
    let runnerTemp: string;
    let imageId: string;
    /** TMPDIRs whose storage-run-<uid> podman 5 made a runtime dir (and a pause process) of. */
    const tmpDirs: string[] = [];

    beforeAll(async () => {
      requireAvailable(podman);
      user = testUser();
      pm = await createPodmanTestEnv(podman, { user, pivot: true });
      await importBusyboxImage(pm, { name: 'app:build' });
      imageId = (await pm.podman(['image', 'inspect', '--format', '{{.Id}}', 'app:build'])).stdout.trim();
      registry = await startRegistry({ auth: 'htpasswd' });
      runnerTemp = mkdtempSync(join(tmpdir(), 'ici-rt-'));
      chownSync(runnerTemp, user.uid, user.gid);
    });

    afterAll(async () => {
      await registry?.stop();
      for (const dir of tmpDirs) {
        const pause = await pauseProcess(join(dir, `storage-run-${user.uid}`), user.uid);
        if (pause) await stopProcess(pause, 5_000);
      }
      await pm?.remove();
      if (runnerTemp) await rm(runnerTemp, { recursive: true, force: true });
    });

    /** A runner service's session: no XDG_RUNTIME_DIR, and a TMPDIR of the user's own. */
    async function noSession(name: string): Promise<{ XDG_RUNTIME_DIR: string; TMPDIR: string }> {
      const dir = join(pm.dir, name);
      await mkdir(dir, { mode: 0o700 });
      await chown(dir, user.uid, user.gid);
      tmpDirs.push(dir);
      return { XDG_RUNTIME_DIR: '', TMPDIR: dir };
    }

    async function login(env: Record<string, string>): Promise<void> {
      await pm.podman(
        ['login', '--tls-verify=false', '-u', registry.username!, '-p', registry.password!, registry.host],
        { env },
      );
    }

    /** main with no credentials input (and post when asked); returns the job after checking nothing was left. */
    async function push(
      env: Record<string, string | undefined>,
      inputs: Record<string, string> = {},
      withPost = false,
    ): Promise<SplitJob> {
      const job = await startSplitJob({
        action: ACTION,
        ...stepScripts(podman, ACTION, pm.dir, user, { pivot: true, warnings: true }),
        inputs: {
          source: 'app:build',
          repositories: `${registry.host}/team/app`,
          tags: 'one',
          'insecure-registries': registry.host,
          ...inputs,
        },
        env: { ...pm.env, ...env },
        runnerTemp,
      });
      if (withPost) expect((await job.post()).exitCode).toBe(0);
      expect(await leftovers(runnerTemp)).toEqual([]);
      return job;
    }

    function registryGet(path: string): Promise<Response> {
      return fetch(`${registry.url}/v2/${path}`, {
        headers: {
          accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json',
          authorization: `Basic ${Buffer.from(`${registry.username!}:${registry.password!}`).toString('base64')}`,
        },
        signal: AbortSignal.timeout(30_000),
      });
    }

    function expectPushedFrom(job: SplitJob, authFile: string): void {
      expect(job.main.errors).toEqual([]);
      expect(job.main.log).toContain(
        `${registry.host}: credentials (user '${registry.username!}') from ${authFile} (entry ${registry.host})`,
      );
      expect(job.main.log).toContain(`app:build is image ${imageId.slice(0, 12)} in local storage`);
      expect(job.main.log).toMatch(
        /skopeo (is not installed|cannot be run \(spawn EACCES[^)]*\)): exporting with podman save/,
      );
      expect(JSON.parse(job.main.outputs['pushed-refs']!)).toHaveLength(1);
    }

    it('without XDG_RUNTIME_DIR: finds the login in $TMPDIR/storage-run-<uid> and pushes the short name', async () => {
      const env = await noSession('tmp-a');
      await login(env);
      const job = await push(env, {}, true);
      expectPushedFrom(job, join(env.TMPDIR, `storage-run-${user.uid}`, 'containers/auth.json'));
      // podman 5 warned (on stderr, in the debug log) and its answers were read all the same.
      expect(job.main.log).toContain('Using cgroups-v1 which is deprecated');
      // The image pushed is the one podman resolved: its config is podman's image ID.
      const manifest = await registryGet('team/app/manifests/one');
      expect(((await manifest.json()) as { config: { digest: string } }).config.digest).toBe(
        `sha256:${imageId}`,
      );
    });

    it('with XDG_RUNTIME_DIR, and with REGISTRY_AUTH_FILE: finds the login podman 5 made there', async () => {
      await login({});
      expectPushedFrom(await push({}), join(pm.env.XDG_RUNTIME_DIR!, 'containers/auth.json'));
      const authFile = join(pm.env.HOME!, 'registry-auth.json');
      await login({ REGISTRY_AUTH_FILE: authFile });
      expectPushedFrom(await push({ REGISTRY_AUTH_FILE: authFile }), authFile);
    });

    // Podman 5 takes no runtime dir through a symlink (containers/storage lstat()s /run/user/<uid>); podman 4
    // follows it. Its login then lands in $TMPDIR/storage-run-<uid>.
    it('without XDG_RUNTIME_DIR and with /run/user/<uid> a symlink: finds the login in storage-run-<uid>', async () => {
      const env = await noSession('tmp-b');
      const target = join(pm.dir, 'linked-run');
      await mkdir(target, { mode: 0o700 });
      await chown(target, user.uid, user.gid);
      const runUser = join(podman.root, 'run/user', String(user.uid));
      await mkdir(join(podman.root, 'run/user'), { recursive: true });
      await symlink(target, runUser);
      try {
        await login(env);
        expectPushedFrom(
          await push(env),
          join(env.TMPDIR, `storage-run-${user.uid}`, 'containers/auth.json'),
        );
      } finally {
        await rm(runUser, { force: true });
      }
    });

    it("says podman's own error when the short-name lookup fails, not its cgroups-v1 warnings", async () => {
      // The session's runtime dir, whose pause process the env's own podman started: a first podman of the step
      // itself would start one that outlives the step.
      const env = { XDG_RUNTIME_DIR: pm.env.XDG_RUNTIME_DIR! };
      // Storage whose image list is not JSON: podman 5 prints its two warnings, then the error.
      const storage = join(pm.dir, 'broken-storage');
      await mkdir(join(storage, 'overlay-images'), { recursive: true });
      await writeFile(join(storage, 'overlay-images/images.json'), '[{"id": broken');
      await chown(storage, user.uid, user.gid);
      await chown(join(storage, 'overlay-images'), user.uid, user.gid);
      const storageConf = join(pm.dir, 'broken-storage.conf');
      await writeFile(storageConf, `[storage]\ndriver = "overlay"\nrootless_storage_path = "${storage}"\n`);
      const job = await startSplitJob({
        action: ACTION,
        ...stepScripts(podman, ACTION, pm.dir, user, { pivot: true, warnings: true }),
        inputs: { source: 'app:build', repositories: `${registry.host}/team/app`, tags: 'one' },
        env: { ...pm.env, ...env, CONTAINERS_STORAGE_CONF: storageConf },
        runnerTemp,
      });
      expect(job.main.log).toMatch(
        /podman could not look up app:build \(exit 125: configure storage: loading/,
      );
      expect(job.main.errors.join('\n')).toMatch(
        /cannot read the source containers-storage:app:build: .*configure storage/,
      );
      expect(job.main.log).not.toMatch(/look up app:build \([^)]*cgroups-v1/);
      expect(await leftovers(runnerTemp)).toEqual([]);
    });

    it('without skopeo, compression: zstd fails saying skopeo is needed for it', async () => {
      const job = await push({ XDG_RUNTIME_DIR: pm.env.XDG_RUNTIME_DIR! }, { compression: 'zstd' });
      expect(job.main.errors.join('\n')).toMatch(
        /cannot read the source containers-storage:app:build: skopeo (is not installed|cannot be run \(spawn EACCES[^)]*\)), and compression: zstd needs it/,
      );
    });

    // podman resolves `app:build` to localhost/app:build first; skopeo's reading (docker.io/library/app:build)
    // differing from it is refused, another registry's app:build is not podman's pick and changes nothing.
    // A manifest list (`podman build --platform a,b --manifest multi`; here two images of this storage given two
    // platforms) is what `podman image inspect multi` resolves to the runner's platform's image: that alone was
    // pushed.
    it('short names: localhost/ before another registry, docker.io differing refused, a manifest list whole', async () => {
      // The other one built by `podman build`, as a workflow's build step would.
      const context = join(pm.dir, 'context');
      await mkdir(context);
      await writeFile(join(context, 'Containerfile'), 'FROM scratch\nCOPY hello /hello\n');
      await writeFile(join(context, 'hello'), 'hello\n');
      for (const path of [context, join(context, 'Containerfile'), join(context, 'hello')])
        await chown(path, user.uid, user.gid);
      await pm.podman(['build', '--quiet', '-t', 'quay.io/app:build', context]);
      const env = { XDG_RUNTIME_DIR: pm.env.XDG_RUNTIME_DIR! };
      await login({});
      try {
        const job = await push(env, { tags: 'two' });
        expect(job.main.errors).toEqual([]);
        expect(job.main.log).toContain(`app:build is image ${imageId.slice(0, 12)} in local storage`);
        await pm.podman(['tag', 'quay.io/app:build', 'docker.io/library/app:build']);
        const refused = await push(env, { tags: 'three' });
        expect(refused.main.errors.join('\n')).toContain(
          `the containers-storage name 'app:build' names two images in local storage: podman resolves it to image ${imageId.slice(0, 12)}`,
        );
        await pm.podman(['manifest', 'create', 'multi']);
        await pm.podman([
          'manifest',
          'add',
          '--arch',
          'amd64',
          'multi',
          'containers-storage:localhost/app:build',
        ]);
        await pm.podman([
          'manifest',
          'add',
          '--arch',
          'arm64',
          'multi',
          'containers-storage:quay.io/app:build',
        ]);
        const list = await push(env, { source: 'multi', tags: 'list' });
        expect(list.main.errors).toEqual([]);
        expect(list.main.log).toContain('multi is a manifest list in local storage');
        const index = (await (await registryGet('team/app/manifests/list')).json()) as {
          manifests: { platform: { architecture: string } }[];
        };
        expect(index.manifests.map((m) => m.platform.architecture)).toEqual(['amd64', 'arm64']);
      } finally {
        await pm.podman(['manifest', 'rm', 'multi'], { allowFailure: true });
        await pm.podman(['rmi', '--force', 'quay.io/app:build', 'docker.io/library/app:build'], {
          allowFailure: true,
        });
      }
    });
  },
);
