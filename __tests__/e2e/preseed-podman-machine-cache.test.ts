/**
 * preseed-podman-vm `cache-scope: machine` with REAL podman, once per podman version (the host's 4.3 and 5 in
 * the trixie root, where the action runs with the root's node and podman), as a non-root user (as on a runner),
 * with the real @actions/cache against the local cache service. Run 1 inits a machine and post saves it; run 2,
 * with another HOME and XDG dirs, restores it without `podman machine init`; a restore where a file cannot be
 * placed is refused with nothing deleted.
 *
 * `podman` on PATH is a wrapper that logs each call and runs the real one: the log is the evidence that init ran
 * (or did not). TEST DOUBLE: `timedatectl` (podman 4.3's init asks it for the time zone; systemd does not run
 * here; podman 5 reads /etc/timezone).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { CacheService, laterRun } from '../support/cache-service.js';
import { runAction, type RunResult } from '../support/harness.js';
import { removeAfterFile } from '../support/run-dir.js';
import { writeTinyMachineImage } from '../support/machine-os.js';
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
const NAME = 'ci-cached';

function strings(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value)) return value.flatMap(strings);
  if (value && typeof value === 'object') return Object.values(value).flatMap(strings);
  return [];
}

function listTree(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort();
}

/** The files a machine is made of, where each podman version keeps them (podman 5: one ssh key for all). */
function machinePaths(podman: PodmanVariant, configPath: string, config: Record<string, unknown>) {
  const ssh = config.SSH as { IdentityPath: string } | undefined;
  return {
    config: (podman.major >= 5 ? configPath : (config.ConfigPath as { Path: string }).Path) as string,
    ignition:
      podman.major >= 5
        ? join(dirname(configPath), `${NAME}.ign`)
        : (config.IgnitionFilePath as { Path: string }).Path,
    image: (config.ImagePath as { Path: string }).Path,
    identity: podman.major >= 5 ? ssh!.IdentityPath : (config.IdentityPath as string),
  };
}

describe.each(podmanVersions())('[$label] cache-scope: machine, real podman as a non-root user', (podman) => {
  let user: User;
  let work: string;
  let image: string;
  let binDir: string;
  let podmanLog: string;
  let runnerTemp: string;
  let service: CacheService;

  function ownedDir(path: string): string {
    mkdirSync(path, { recursive: true });
    chownSync(path, user.uid, user.gid);
    return path;
  }

  /** A HOME of the test user, and a runtime dir beside it, so podman keeps nothing in TMPDIR. */
  function newHome(name: string): { home: string; runtime: string } {
    const runtime = ownedDir(join(work, `${name}-run`));
    chmodSync(runtime, 0o700);
    return { home: ownedDir(join(work, name)), runtime };
  }

  function initCalls(): number {
    return readFileSync(podmanLog, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('machine init')).length;
  }

  async function run(env: Record<string, string | undefined>, extra: Record<string, string> = {}) {
    return runAction({
      // The action's cache path stays for the next job's save or restore.
      keepInRunnerTemp: ['ici-pvm'],
      ...stepScripts(podman, ACTION, work, user),
      inputs: {
        image,
        init: 'true',
        'machine-name': NAME,
        'cache-scope': 'machine',
        'set-default': 'false',
        ...extra,
      },
      runnerTemp,
      env: {
        ...service.env({ runnerTemp }),
        PATH: `${binDir}:${process.env.PATH}`,
        XDG_CONFIG_HOME: undefined,
        XDG_DATA_HOME: undefined,
        ...env,
      },
    });
  }

  /** podman as the test user with the given HOME / XDG dirs. */
  function podmanAs(env: Record<string, string>, args: string[]) {
    const full = { PATH: process.env.PATH, TMPDIR: process.env.TMPDIR, ...env };
    return runWith(podman, 'podman', args, {
      user,
      env: full,
      cwd: '/',
      timeoutMs: 60_000,
      allowFailure: true,
    });
  }

  beforeAll(async () => {
    requireAvailable(podman);
    user = testUser();
    work = mkdtempSync(join(tmpdir(), 'ici-pvm-mcache-'));
    chmodSync(work, 0o755);
    ({ image } = writeTinyMachineImage(work));
    binDir = join(work, 'bin');
    mkdirSync(binDir);
    podmanLog = join(work, 'podman.calls');
    writeFileSync(podmanLog, '');
    chmodSync(podmanLog, 0o666);
    writeFileSync(
      join(binDir, 'podman'),
      `#!/bin/sh\necho "$*" >> '${podmanLog}'\nexec /usr/bin/podman "$@"\n`,
      {
        mode: 0o755,
      },
    );
    writeFileSync(join(binDir, 'timedatectl'), '#!/bin/sh\necho Timezone=UTC\n', { mode: 0o755 });
    runnerTemp = ownedDir(join(work, 'runner-temp'));
    service = await CacheService.start();
  });

  afterAll(async () => {
    await service?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  let run1: RunResult;

  it('run 1 (cold): init runs, post saves the staged machine and removes the machine', async () => {
    const { home: home1, runtime } = newHome('home1');
    run1 = await run({ HOME: home1, XDG_RUNTIME_DIR: runtime });
    expect({ exit: run1.main.exitCode, errors: run1.errors }).toEqual({ exit: 0, errors: [] });
    expect(run1.outputs['machine-cache-hit']).toBe('false');
    expect(initCalls()).toBe(1);
    expect(run1.log).toMatch(/Cache saved: podman-machine-os-machine-/);
    expect(run1.log).toContain(`Removed podman machine ${NAME}.`);
    console.info(`run 1 (init + stage): main ${run1.main.durationMs} ms, post ${run1.post?.durationMs} ms`);
  });

  it('run 2 (other HOME and XDG dirs): restored without init, listed, paths only in the new HOME', async () => {
    for (const old of await laterRun([runnerTemp])) removeAfterFile(old);
    chownSync(runnerTemp, user.uid, user.gid);
    const { home: home2, runtime } = newHome('home2');
    const env = {
      HOME: home2,
      XDG_CONFIG_HOME: join(home2, 'cfg'),
      XDG_DATA_HOME: join(home2, 'data'),
      XDG_RUNTIME_DIR: runtime,
    };
    const r = await run(env, { cleanup: 'false' });
    expect({ exit: r.main.exitCode, errors: r.errors }).toEqual({ exit: 0, errors: [] });
    expect(r.outputs['machine-cache-hit']).toBe('true');
    expect(initCalls()).toBe(1);
    expect(r.log).toContain('podman machine init was not run');
    expect(r.log).not.toMatch(/Cache saved/);
    console.info(`run 2 (restore): main ${r.main.durationMs} ms`);

    const configPath = join(home2, 'cfg/containers/podman/machine/qemu', `${NAME}.json`);
    const config = JSON.parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    const all = strings(config);
    expect(all.filter((s) => s.includes(join(work, 'home1')))).toEqual([]);
    const paths = machinePaths(podman, configPath, config);
    const cfg = join(home2, 'cfg/containers/podman/machine/qemu');
    const data = join(home2, 'data/containers/podman/machine');
    expect(paths).toEqual(
      podman.major >= 5
        ? {
            config: configPath,
            ignition: join(cfg, `${NAME}.ign`),
            image: join(data, 'qemu', `${NAME}-${process.arch === 'arm64' ? 'arm64' : 'amd64'}.qcow2`),
            identity: join(data, 'machine'),
          }
        : {
            config: configPath,
            ignition: join(cfg, `${NAME}.ign`),
            image: join(data, 'qemu/machine-os.qcow2.zst'),
            identity: join(home2, '.ssh', NAME),
          },
    );
    expect(Object.values(paths).filter((p) => !existsSync(p))).toEqual([]);
    // ssh refuses a private key others can read.
    expect((statSync(paths.identity).mode & 0o777).toString(8)).toBe('600');
    expect(statSync(paths.identity).uid).toBe(user.uid);
    expect(
      JSON.parse(execFileSync('qemu-img', ['info', '--output=json', paths.image], { encoding: 'utf8' })),
    ).toMatchObject({ format: 'qcow2' });

    const ls = await podmanAs(env, ['machine', 'ls', '--format', 'json']);
    expect({ out: ls.stdout, err: ls.stderr }).toMatchObject({
      out: expect.stringContaining(`"Name": "${NAME}`) as unknown as string,
    });
    const inspect = await podmanAs(env, ['machine', 'inspect', NAME]);
    expect({ status: inspect.exitCode, stderr: inspect.stderr }).toMatchObject({ status: 0 });
    const connections = await podmanAs(env, [
      'system',
      'connection',
      'ls',
      '--format',
      '{{.Name}} {{.URI}} {{.Identity}}',
    ]);
    expect(connections.stdout).toContain(`${NAME}-root ssh://root@localhost:`);
    expect(connections.stdout).toContain(`${NAME} ssh://core@localhost:`);
    expect(connections.stdout).toContain(paths.identity);
  });

  it('a restore where a file cannot be placed is refused with nothing deleted or left behind', async () => {
    for (const old of await laterRun([runnerTemp])) removeAfterFile(old);
    chownSync(runnerTemp, user.uid, user.gid);
    const { home: home3, runtime } = newHome('home3');
    // XDG_DATA_HOME below a regular file: the disk cannot be placed there.
    writeFileSync(join(home3, 'blocker'), 'keep me');
    chownSync(join(home3, 'blocker'), user.uid, user.gid);
    // Podman 5 makes an empty ~/.config whenever it starts, `podman --version` included: part of the baseline.
    await podmanAs({ HOME: home3, XDG_RUNTIME_DIR: runtime }, ['--version']);
    const before = listTree(home3);
    const r = await run({
      HOME: home3,
      XDG_DATA_HOME: join(home3, 'blocker', 'data'),
      XDG_RUNTIME_DIR: runtime,
    });
    expect(r.main.exitCode).toBe(1);
    expect(r.errors.join('\n')).toMatch(
      new RegExp(
        `refusing to restore machine '${NAME}': .*blocker is not a directory.*Nothing was changed or deleted`,
      ),
    );
    expect(listTree(home3)).toEqual(before);
    expect(readFileSync(join(home3, 'blocker'), 'utf8')).toBe('keep me');
    expect(initCalls()).toBe(1);
    // The restored cache copy is kept and post neither saves nor removes a machine it did not make.
    expect(readdirSync(join(runnerTemp, 'ici-pvm', 'machine')).sort()).toEqual([
      'config.json',
      'disk',
      'identity',
      'identity.pub',
      'ignition',
      'manifest.json',
    ]);
    expect(r.log).not.toMatch(/Removed podman machine|Could not remove podman machine/);
    expect(r.post?.exitCode).toBe(0);
  });
});
