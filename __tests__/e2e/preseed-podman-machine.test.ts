/**
 * preseed-podman-vm and `podman machine`: the command lines the action runs (through a `podman` TEST DOUBLE,
 * since no VM can boot here), input mistakes, and a REAL `podman machine init` run offline by a non-root user
 * with a throw-away HOME and the containers.conf the action exported, once per podman version (the host's 4.3
 * and 5 in the trixie root, where the action runs with the root's node and podman).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
  existsSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { laterRun } from '../support/cache-service.js';
import { runAction } from '../support/harness.js';
import { buildMachineOsLayout, publishMachineOs, writeTinyMachineImage } from '../support/machine-os.js';
import { startRegistry } from '../support/registry.js';
import {
  podmanVersions,
  requireAvailable,
  runWith,
  stepScripts,
  testUser,
  type PodmanVariant,
  type User,
} from '../support/podman-matrix.js';

const ACTION = 'preseed-podman-vm';
let work: string;
let image: string;
let qcow2: string;
/** Nothing listens there: with it as proxy, podman cannot download anything. */
const DEAD_PROXY = 'http://127.0.0.1:9';

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'ici-pvm-machine-'));
  chmodSync(work, 0o755);
  ({ image, qcow2 } = writeTinyMachineImage(work));
});

function ownedDir(path: string, user: User): string {
  mkdirSync(path, { recursive: true, mode: 0o700 });
  chownSync(path, user.uid, user.gid);
  return path;
}

/** CONTAINERS_CONF_OVERRIDE exists from podman 4.4 on. */
function confOverride(podman: PodmanVariant): boolean {
  return podman.major > 4 || (podman.major === 4 && podman.minor >= 4);
}

afterAll(() => rmSync(work, { recursive: true, force: true }));

/**
 * A `podman` test double: records every call, answers --version with `version`, knows no machine (inspect fails
 * as podman does for a name it has no machine of, unless `inspectError` gives another failure).
 */
function podmanDouble(
  version: string,
  inspectError = 'Error: $3: VM does not exist',
): { bin: string; calls: () => string[] } {
  const dir = mkdtempSync(join(work, 'double-'));
  const log = join(dir, 'calls');
  writeFileSync(
    join(dir, 'podman'),
    `#!/bin/sh\nprintf '%s\\n' "$*" >> '${log}'\n[ "$1" = --version ] && echo 'podman version ${version}'\n[ "$1 $2" = 'machine inspect' ] && echo "${inspectError}" >&2 && exit 125\nexit 0\n`,
    { mode: 0o755 },
  );
  return { bin: dir, calls: () => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : []) };
}

describe('podman machine command lines (podman TEST DOUBLE: no VM can run here)', () => {
  const inputs = {
    init: 'true',
    'machine-name': 'ci-vm',
    cpus: '2',
    memory: '2048',
    'disk-size': '20',
    rootful: 'true',
  };

  it('podman 5: init --image with resources, CONTAINERS_CONF_OVERRIDE, post stops and removes the machine', async () => {
    const double = podmanDouble('5.2.1');
    const r = await runAction({
      // The action's cache path stays for the next job's save or restore.
      keepInRunnerTemp: ['ici-pvm'],
      action: ACTION,
      inputs: { ...inputs, image },
      env: { PATH: `${double.bin}:${process.env.PATH}` },
    });
    expect(r.main.exitCode).toBe(0);
    expect(r.post?.exitCode).toBe(0);
    expect(double.calls()).toEqual([
      '--version',
      'machine inspect ci-vm',
      `machine init --image ${image} --cpus 2 --memory 2048 --disk-size 20 --rootful ci-vm`,
      'machine stop ci-vm',
      'machine rm --force ci-vm',
    ]);
    expect(r.outputs['machine-name']).toBe('ci-vm');
    expect(r.outputs['image-path']).toBe(image);
    const conf = r.exportedEnv.CONTAINERS_CONF_OVERRIDE!;
    expect(readFileSync(conf, 'utf8')).toBe(`[machine]\nimage = "${image}"\n`);
    // Before, nothing said that podman run through `sudo -u` (which resets the environment) does not see it.
    expect(r.log).toContain('`sudo --preserve-env=CONTAINERS_CONF_OVERRIDE -u <user> podman machine init`');
  });

  it('podman 4: init --image-path, start when asked, no cleanup when cleanup is false', async () => {
    const double = podmanDouble('4.9.4');
    const r = await runAction({
      // The action's cache path stays for the next job's save or restore.
      keepInRunnerTemp: ['ici-pvm'],
      action: ACTION,
      inputs: { image, init: 'true', start: 'true', cleanup: 'false', 'machine-name': 'm4' },
      env: { PATH: `${double.bin}:${process.env.PATH}` },
    });
    expect(r.main.exitCode).toBe(0);
    expect(double.calls()).toEqual([
      '--version',
      'machine inspect m4',
      `machine init --image-path ${image} m4`,
      'machine start m4',
    ]);
    expect(r.exportedEnv.CONTAINERS_CONF_OVERRIDE).toBeDefined();
  });

  // Before: any failed inspect counted as "no such machine": init ran on a name podman could not read (podman 4.3
  // wrote a new machine over it), and post, with cleanup on, removed it.
  it('an inspect that fails for another reason than "does not exist" fails the step; no init, no removal', async () => {
    const double = podmanDouble('5.2.1', 'Error: database is locked');
    const r = await runAction({
      keepInRunnerTemp: ['ici-pvm'],
      action: ACTION,
      inputs: { image, init: 'true', 'machine-name': 'ci-vm' },
      env: { PATH: `${double.bin}:${process.env.PATH}` },
    });
    expect({ calls: double.calls(), main: r.main.exitCode, post: r.post?.exitCode }).toEqual({
      calls: ['--version', 'machine inspect ci-vm'],
      main: 1,
      post: 0,
    });
    expect(r.errors.join('\n')).toMatch(
      /cannot tell whether a qemu machine named ci-vm exists: `podman machine inspect ci-vm` failed \(exit 125: Error: database is locked\), so it is neither initialised nor removed/,
    );
  });
});

describe('input mistakes fail with exit 2 and name the input', () => {
  const cases: Array<[string, Record<string, string>, RegExp]> = [
    ['unknown vm-type', { 'vm-type': 'virtualbox' }, /Input 'vm-type': must be one of/],
    ['start without init', { start: 'true' }, /Input 'start': needs `init: true`/],
    [
      'a path that does not exist',
      { image: '/nonexistent/disk.qcow2.zst' },
      /Input 'image': the file \/nonexistent/,
    ],
    [
      'arch mismatch with init',
      { arch: process.arch === 'x64' ? 'aarch64' : 'x86_64', init: 'true' },
      /Input 'arch'/,
    ],
  ];
  for (const [name, inputs, message] of cases) {
    it(name, async () => {
      const r = await runAction({
        action: ACTION,
        inputs: { image, ...inputs },
        keepInRunnerTemp: ['ici-pvm'],
      });
      expect(r.main.exitCode).toBe(2);
      expect(r.errors.join('\n')).toMatch(message);
    });
  }
});

/**
 * Runs `podman machine init <name>` as the test user, offline, with a throw-away HOME and a user-owned copy of
 * the containers.conf the action exported (the runner user owns it in a real job; podman 4 writes its machine
 * connections into CONTAINERS_CONF), checks that the disk podman made holds the seeded bytes, and returns the
 * machine's config.
 */
async function initOffline(
  podman: PodmanVariant,
  exported: Record<string, string>,
  name: string,
): Promise<Record<string, unknown>> {
  const variable = confOverride(podman) ? 'CONTAINERS_CONF_OVERRIDE' : 'CONTAINERS_CONF';
  const conf = exported[variable];
  expect(conf).toBeDefined();
  const user = testUser();
  const home = ownedDir(join(work, `home-${podman.version}-${name}`), user);
  const ownConf = join(work, `user-containers-${podman.version}-${name}.conf`);
  writeFileSync(ownConf, readFileSync(conf!));
  chownSync(ownConf, user.uid, user.gid);
  const env = {
    PATH: process.env.PATH,
    TMPDIR: process.env.TMPDIR,
    HOME: home,
    XDG_RUNTIME_DIR: ownedDir(join(home, 'run'), user),
    [variable]: ownConf,
    // Offline: any download attempt fails at once.
    HTTP_PROXY: DEAD_PROXY,
    HTTPS_PROXY: DEAD_PROXY,
  };
  const podmanAsUser = (args: string[]) =>
    runWith(podman, 'podman', args, { user, env, cwd: home, timeoutMs: 60_000, allowFailure: true });
  const init = await podmanAsUser(['machine', 'init', name]);
  // Facts: podman 4.3 here prints `Error: exit status 1` after creating the machine, so for it the exit code
  // is not the evidence; the machine files and `podman machine ls` are.
  if (podman.major >= 5) {
    // stderr only on a failure, where it is the reason (podman 5 warns on stderr also when it succeeds).
    expect({ exit: init.exitCode, stderr: init.exitCode === 0 ? '' : init.stderr }).toEqual({
      exit: 0,
      stderr: '',
    });
  }
  const dataDir = join(home, '.local/share/containers/podman/machine/qemu');
  const machineJson = join(home, `.config/containers/podman/machine/qemu/${name}.json`);
  expect({ init: init.stdout + init.stderr, json: existsSync(machineJson) }).toMatchObject({
    json: true,
  });
  const config = JSON.parse(readFileSync(machineJson, 'utf8')) as { ImagePath: { Path: string } };
  expect(config.ImagePath.Path.startsWith(dataDir)).toBe(true);
  // podman 4 keeps the image's file name, podman 5 names the disk after the machine.
  expect(basename(config.ImagePath.Path)).toBe(
    podman.major >= 5 ? `${name}-${process.arch === 'arm64' ? 'arm64' : 'amd64'}.qcow2` : basename(image),
  );
  // The disk podman made holds the seeded bytes (decompressed; podman 5 also grew it), not a download.
  const compare = spawnSync('qemu-img', ['compare', qcow2, config.ImagePath.Path], { encoding: 'utf8' });
  expect({ status: compare.status, out: compare.stdout }).toMatchObject({
    status: 0,
    out: expect.stringContaining('Images are identical.') as unknown as string,
  });
  const ls = await podmanAsUser(['machine', 'ls', '--format', 'json']);
  expect(ls.stdout).toContain(`"Name": "${name}`);
  return config;
}

describe.each(podmanVersions())(
  '[$label] real podman machine init, offline, non-root, throw-away HOME',
  (podman) => {
    beforeAll(() => requireAvailable(podman));

    it('uses the image named by the containers.conf the action exported', async () => {
      // The action runs as root (as before any user exists), with this row's node and podman.
      const r = await runAction({
        ...stepScripts(podman, ACTION, work),
        inputs: { image },
        keepInRunnerTemp: ['ici-pvm'],
      });
      expect({ exit: r.main.exitCode, errors: r.errors }).toEqual({ exit: 0, errors: [] });
      await initOffline(podman, r.exportedEnv, 'ci-offline');
    });

    // Podman reads one CONTAINERS_CONF_OVERRIDE file (podman >= 4.4; older podman has none to keep). Before, the
    // action exported its own and the user's settings were gone: the machine got podman's default CPUs.
    (confOverride(podman) ? it : it.skip)(
      'keeps the settings of a CONTAINERS_CONF_OVERRIDE an earlier step set (podman >= 4.4 only)',
      async () => {
        const earlier = join(work, `earlier-override-${podman.version}.conf`);
        writeFileSync(earlier, '[machine]\ncpus = 3\nmemory = 1536\n');
        const r = await runAction({
          ...stepScripts(podman, ACTION, work),
          inputs: { image },
          env: { CONTAINERS_CONF_OVERRIDE: earlier },
          keepInRunnerTemp: ['ici-pvm'],
        });
        expect({ exit: r.main.exitCode, errors: r.errors }).toEqual({ exit: 0, errors: [] });
        const config = await initOffline(podman, r.exportedEnv, 'ci-override');
        expect(config.Resources).toMatchObject({ CPUs: 3, Memory: 1536 });
      },
    );

    // Before: init failed on the machine that was there (`VM already exists`), and post, with cleanup on,
    // removed it: on a self-hosted runner, its own long-lived machine.
    (podman.major >= 5 ? it : it.skip)(
      'init: true on the name of a machine it did not make fails, and post leaves that machine alone',
      async () => {
        const user = testUser();
        const home = ownedDir(join(work, `existing-${podman.version}`), user);
        const runtime = ownedDir(join(home, 'run'), user);
        const env = {
          PATH: process.env.PATH,
          TMPDIR: process.env.TMPDIR,
          HOME: home,
          XDG_RUNTIME_DIR: runtime,
          HTTP_PROXY: DEAD_PROXY,
          HTTPS_PROXY: DEAD_PROXY,
        };
        const podmanAsUser = (args: string[]) =>
          runWith(podman, 'podman', args, { user, env, cwd: home, timeoutMs: 60_000, allowFailure: true });
        const own = await podmanAsUser(['machine', 'init', '--image', image, 'ci-own']);
        expect({ exit: own.exitCode, stderr: own.exitCode === 0 ? '' : own.stderr }).toEqual({
          exit: 0,
          stderr: '',
        });
        try {
          const r = await runAction({
            ...stepScripts(podman, ACTION, work, user),
            inputs: { image, init: 'true', 'machine-name': 'ci-own' },
            runnerTemp: ownedDir(join(home, 'temp'), user),
            home,
            env: { XDG_RUNTIME_DIR: runtime, XDG_DATA_HOME: undefined, XDG_CONFIG_HOME: undefined },
            keepInRunnerTemp: ['ici-pvm'],
          });
          const inspect = await podmanAsUser(['machine', 'inspect', 'ci-own']);
          expect({ post: r.post?.exitCode, inspect: inspect.exitCode === 0 ? 0 : inspect.stderr }).toEqual({
            post: 0,
            inspect: 0,
          });
          expect(r.main.exitCode).toBe(1);
          expect(r.errors.join('\n')).toMatch(
            /a qemu machine named ci-own exists already; it was not made by this step/,
          );
        } finally {
          await podmanAsUser(['machine', 'rm', '--force', 'ci-own']);
        }
      },
    );

    // Before: an inspect failing on the machine's unreadable config counted as "no machine". Podman 4.3 then
    // wrote a new machine over that config and post removed it; podman 5's init failed on it, and the step
    // said only that.
    it('init: true on a machine whose config podman cannot read fails saying so; the config stays', async () => {
      const user = testUser();
      const home = ownedDir(join(work, `broken-${podman.version}`), user);
      const configDir = ownedDir(join(home, '.config/containers/podman/machine/qemu'), user);
      for (const dir of [
        join(home, '.config'),
        join(home, '.config/containers'),
        join(home, '.config/containers/podman'),
        join(home, '.config/containers/podman/machine'),
      ]) {
        chownSync(dir, user.uid, user.gid);
      }
      const config = join(configDir, 'ci-broken.json');
      writeFileSync(config, '{broken');
      chownSync(config, user.uid, user.gid);
      const r = await runAction({
        ...stepScripts(podman, ACTION, work, user),
        inputs: { image, init: 'true', 'machine-name': 'ci-broken' },
        runnerTemp: ownedDir(join(home, 'temp'), user),
        home,
        env: {
          XDG_RUNTIME_DIR: ownedDir(join(home, 'run'), user),
          XDG_DATA_HOME: undefined,
          XDG_CONFIG_HOME: undefined,
          HTTP_PROXY: DEAD_PROXY,
          HTTPS_PROXY: DEAD_PROXY,
        },
        keepInRunnerTemp: ['ici-pvm'],
      });
      expect({ main: r.main.exitCode, post: r.post?.exitCode, config: readFileSync(config, 'utf8') }).toEqual(
        {
          main: 1,
          post: 0,
          config: '{broken',
        },
      );
      expect(r.errors.join('\n')).toMatch(
        /cannot tell whether a qemu machine named ci-broken exists: `podman machine inspect ci-broken` failed \(exit 125: Error: .*invalid character 'b'.*\), so it is neither initialised nor removed/,
      );
      // No disk was made (podman 5 makes the empty dirs on inspect).
      const dataDir = join(home, '.local/share/containers/podman/machine/qemu');
      const disks = existsSync(dataDir)
        ? readdirSync(dataDir, { withFileTypes: true }).filter((e) => e.isFile())
        : [];
      expect(disks.map((e) => e.name)).toEqual([]);
    });

    // Podman gives the disk it makes the mode of its image file (pkg/machine/compression: compressedFileMode), so
    // a read-only image makes a disk its own `qemu-img resize` cannot open. Before, the directory backend restored
    // the image as a hard link of its read-only entry, and on the warm run a non-root init failed with
    // `qemu-img: Could not open '...-amd64.qcow2': Permission denied`.
    (podman.major >= 5 ? it : it.skip)(
      'a warm run restored from the directory cache gives an image a non-root podman 5 can init from',
      async () => {
        const registry = await startRegistry();
        try {
          const arch = process.arch === 'arm64' ? 'aarch64' : 'x86_64';
          const fake = buildMachineOsLayout(join(work, `layout-${podman.version}`), {
            disks: [[arch, 'qemu']],
            content: () => qcow2,
          });
          await publishMachineOs(fake, registry.host, 'podman/machine-os', '5.4');
          // The action runs as the runner user does, with a cache volume it owns.
          const user = testUser();
          const cacheDir = ownedDir(join(work, `dir-cache-${podman.version}`), user);
          // A later run of the same job: the same RUNNER_TEMP and HOME paths (the cache version hashes the
          // paths), the earlier run's contents gone.
          const home = join(work, `job-${podman.version}`);
          const job = async () => {
            await laterRun([home]);
            ownedDir(home, user);
            return runAction({
              ...stepScripts(podman, ACTION, work, user),
              inputs: { image: `docker://${registry.host}/podman/machine-os:5.4` },
              runnerTemp: ownedDir(join(home, 'temp'), user),
              home,
              env: {
                IMAGE_CI_CACHE_DIR: cacheDir,
                XDG_RUNTIME_DIR: ownedDir(join(home, 'run'), user),
                XDG_DATA_HOME: undefined,
                XDG_CONFIG_HOME: undefined,
              },
              keepInRunnerTemp: ['ici-pvm'],
            });
          };
          const cold = await job();
          expect({ exit: cold.main.exitCode, errors: cold.errors }).toEqual({ exit: 0, errors: [] });
          const warm = await job();
          expect({ exit: warm.main.exitCode, errors: warm.errors, hit: warm.outputs['cache-hit'] }).toEqual({
            exit: 0,
            errors: [],
            hit: 'true',
          });
          await initOffline(podman, warm.exportedEnv, 'ci-warm');
        } finally {
          await registry.stop();
        }
      },
    );
  },
);
