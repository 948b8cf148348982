/**
 * push-multi-tag as GitHub's hosted runners run it: main and post as an ordinary user (the `runner` account, not
 * root), the image built by that user's rootless podman into its own storage and named as
 * redhat-actions/buildah-build outputs it (`app:build`, no registry host: stored as `localhost/app:build`), and
 * the registry's password given as an input.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { chownSync, mkdtempSync } from 'node:fs';
import { chown, mkdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { importBusyboxImage } from '../support/images.js';
import { leftovers } from '../support/leftovers.js';
import { createPodmanTestEnv, type PodmanTestEnv } from '../support/podman.js';
import { hostPodman, requireAvailable, stepScripts, testUser } from '../support/podman-matrix.js';
import { startRegistry, type RegistryService } from '../support/registry.js';
import { startSplitJob } from '../support/split-job.js';

const ACTION = 'push-multi-tag';

// Only the host's podman: the kernel makes no user namespace inside the trixie root entered by chroot (see
// remote-build-env-rootless). Rootless podman 5, entered by pivot_root: push-multi-tag-podman5-rootless.test.ts.
describe.each([hostPodman()])('[$label] push-multi-tag as an ordinary user (rootless storage)', (podman) => {
  let pm: PodmanTestEnv;
  let registry: RegistryService;
  let runnerTemp: string;

  beforeAll(async () => {
    requireAvailable(podman);
    const user = testUser();
    pm = await createPodmanTestEnv(podman, { user });
    await importBusyboxImage(pm, { name: 'app:build' });
    registry = await startRegistry({ auth: 'htpasswd' });
    runnerTemp = mkdtempSync(join(tmpdir(), 'ici-rt-'));
    chownSync(runnerTemp, user.uid, user.gid);
  });

  afterAll(async () => {
    await registry?.stop();
    await pm?.remove();
    if (runnerTemp) await rm(runnerTemp, { recursive: true, force: true });
  });

  it('pushes a short-named image of its own storage with a password, and post leaves nothing behind', async () => {
    const job = await startSplitJob({
      action: ACTION,
      ...stepScripts(podman, ACTION, pm.dir, testUser()),
      inputs: {
        source: 'app:build',
        repositories: `${registry.host}/team/app`,
        tags: 'one, two',
        username: registry.username!,
        password: registry.password!,
        'insecure-registries': registry.host,
      },
      env: pm.env,
      runnerTemp,
    });
    expect(job.main.errors).toEqual([]);
    expect(job.main.main.exitCode).toBe(0);
    expect(job.main.log).toMatch(/app:build is image [0-9a-f]{12} in local storage \(resolved by podman/);
    expect(JSON.parse(job.main.outputs['pushed-refs']!)).toHaveLength(2);
    const post = await job.post();
    expect(post.exitCode).toBe(0);
    expect(await leftovers(runnerTemp)).toEqual([]);
    // Nothing the user's own tools read keeps the password: the login went through the step's own auth file.
    const config = await readFile(join(pm.env.HOME!, '.docker/config.json'), 'utf8').catch(() => '');
    expect(config).not.toContain(registry.password!);
  });

  // A self-hosted runner as a systemd service has no login session: no XDG_RUNTIME_DIR. Rootless `podman login`
  // then writes below a runtime dir of its own choosing ($TMPDIR/podman-run-<uid> here, no /run/user/<uid>).
  it('finds the login rootless `podman login` made without XDG_RUNTIME_DIR', async () => {
    const user = testUser();
    const tmp = join(pm.dir, 'tmp');
    await mkdir(tmp, { mode: 0o700 });
    await chown(tmp, user.uid, user.gid);
    const noSession = { XDG_RUNTIME_DIR: '', TMPDIR: tmp };
    await pm.podman(
      ['login', '--tls-verify=false', '-u', registry.username!, '-p', registry.password!, registry.host],
      { env: noSession },
    );
    const job = await startSplitJob({
      action: ACTION,
      ...stepScripts(podman, ACTION, pm.dir, user),
      inputs: {
        source: 'app:build',
        repositories: `${registry.host}/team/logged-in`,
        tags: 'one',
        'insecure-registries': registry.host,
      },
      env: { ...pm.env, ...noSession },
      runnerTemp,
    });
    expect(job.main.errors).toEqual([]);
    expect(job.main.log).toContain(
      `${registry.host}: credentials (user '${registry.username!}') from ${join(tmp, `podman-run-${user.uid}`, 'containers/auth.json')}`,
    );
    expect((await job.post()).exitCode).toBe(0);
    expect(await leftovers(runnerTemp)).toEqual([]);
  });
});
