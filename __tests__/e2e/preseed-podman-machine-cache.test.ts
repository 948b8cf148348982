/**
 * preseed-podman-vm `cache-scope: machine` with the REAL podman 4.3, run as a non-root user (as on a runner) with
 * the real @actions/cache against the local cache service. Run 1 inits a machine and post saves it; run 2, with
 * another HOME and XDG dirs, restores it without `podman machine init`; a restore where a file cannot be placed
 * is refused with nothing deleted.
 *
 * TEST DOUBLE: `timedatectl` (podman 4.3's init asks it for the time zone; systemd does not run here). It answers
 * like systemd and logs each call, which is the evidence that init ran (or did not).
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFileSync, spawnSync } from 'node:child_process';
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
import { join } from 'node:path';
import { CacheService, laterRun } from '../support/cache-service.js';
import { REPO_ROOT, runAction, type RunResult } from '../support/harness.js';
import { writeTinyMachineImage } from '../support/machine-os.js';

const ACTION = 'preseed-podman-vm';
const USER = 'icipvm';
const NAME = 'ci-cached';
let work: string;
let image: string;
let shimDir: string;
let shimLog: string;
let runnerTemp: string;
let service: CacheService;
let uid: number;
let gid: number;

/** The runner runs actions as an ordinary user: each step drops to USER before it loads the dist script. */
function asUserScript(phase: 'main' | 'post'): string {
  const path = join(work, `${phase}-as-user.mjs`);
  writeFileSync(
    path,
    `import { chmodSync, chownSync } from 'node:fs';
import { dirname } from 'node:path';
const e = process.env;
chmodSync(dirname(dirname(e.GITHUB_OUTPUT)), 0o755);
for (const p of [dirname(e.GITHUB_OUTPUT), e.GITHUB_OUTPUT, e.GITHUB_STATE, e.GITHUB_ENV, e.GITHUB_PATH,
  e.GITHUB_STEP_SUMMARY, e.GITHUB_WORKSPACE]) chownSync(p, ${uid}, ${gid});
process.setgroups([${gid}]);
process.setgid(${gid});
process.setuid(${uid});
process.chdir(e.GITHUB_WORKSPACE);
await import(${JSON.stringify(join(REPO_ROOT, 'dist', ACTION, `${phase}.js`))});
`,
  );
  return path;
}

function ownedDir(path: string): string {
  mkdirSync(path, { recursive: true });
  chownSync(path, uid, gid);
  return path;
}

function shimCalls(): number {
  return existsSync(shimLog) ? readFileSync(shimLog, 'utf8').split('\n').filter(Boolean).length : 0;
}

async function run(env: Record<string, string | undefined>, extra: Record<string, string> = {}) {
  return runAction({
    mainScript: asUserScript('main'),
    postScript: asUserScript('post'),
    actionYml: join(REPO_ROOT, 'actions', ACTION, 'action.yml'),
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
      PATH: `${shimDir}:${process.env.PATH}`,
      XDG_RUNTIME_DIR: undefined,
      XDG_CONFIG_HOME: undefined,
      XDG_DATA_HOME: undefined,
      ...env,
    },
  });
}

/** podman as USER with the given HOME / XDG dirs (su parses options anywhere, so the args go in the command). */
function podmanAs(env: Record<string, string>, args: string[]) {
  const quote = (v: string) => `'${v.replace(/'/g, `'\\''`)}'`;
  const vars = Object.entries(env).map(([k, v]) => `${k}=${quote(v)}`);
  const cmd = `cd / && env -u XDG_RUNTIME_DIR ${vars.join(' ')} timeout 60 podman ${args.map(quote).join(' ')}`;
  return spawnSync('su', [USER, '-s', '/bin/sh', '-c', cmd], { encoding: 'utf8', timeout: 90_000 });
}

function strings(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value)) return value.flatMap(strings);
  if (value && typeof value === 'object') return Object.values(value).flatMap(strings);
  return [];
}

function listTree(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort();
}

beforeAll(async () => {
  if (process.getuid?.() !== 0) throw new Error('this test creates a user (useradd) and needs root');
  if (spawnSync('id', [USER]).status !== 0) execFileSync('useradd', ['-m', USER]);
  uid = Number(execFileSync('id', ['-u', USER], { encoding: 'utf8' }));
  gid = Number(execFileSync('id', ['-g', USER], { encoding: 'utf8' }));
  work = mkdtempSync(join(tmpdir(), 'ici-pvm-mcache-'));
  chmodSync(work, 0o755);
  ({ image } = writeTinyMachineImage(work));
  shimDir = join(work, 'bin');
  mkdirSync(shimDir);
  shimLog = join(work, 'timedatectl.calls');
  writeFileSync(shimLog, '');
  chmodSync(shimLog, 0o666);
  writeFileSync(join(shimDir, 'timedatectl'), `#!/bin/sh\necho "$*" >> '${shimLog}'\necho Timezone=UTC\n`, {
    mode: 0o755,
  });
  runnerTemp = ownedDir(join(work, 'runner-temp'));
  service = await CacheService.start();
});

afterAll(async () => {
  await service?.stop();
  rmSync(work, { recursive: true, force: true });
});

describe('cache-scope: machine, real podman 4.3 as a non-root user', () => {
  let home2: string;
  let run1: RunResult;

  it('run 1 (cold): init runs, post saves the staged machine and removes the machine', async () => {
    const home1 = ownedDir(join(work, 'home1'));
    run1 = await run({ HOME: home1 });
    expect({ exit: run1.main.exitCode, errors: run1.errors }).toEqual({ exit: 0, errors: [] });
    expect(run1.outputs['machine-cache-hit']).toBe('false');
    expect(shimCalls()).toBeGreaterThan(0);
    expect(run1.log).toMatch(/Cache saved: podman-machine-os-machine-/);
    expect(run1.log).toContain(`Removed podman machine ${NAME}.`);
    console.info(`run 1 (init + stage): main ${run1.main.durationMs} ms, post ${run1.post?.durationMs} ms`);
  });

  it('run 2 (other HOME and XDG dirs): restored without init, listed, paths only in the new HOME', async () => {
    await laterRun([runnerTemp]);
    chownSync(runnerTemp, uid, gid);
    const initCalls = shimCalls();
    home2 = ownedDir(join(work, 'home2'));
    const env = { HOME: home2, XDG_CONFIG_HOME: join(home2, 'cfg'), XDG_DATA_HOME: join(home2, 'data') };
    const r = await run(env, { cleanup: 'false' });
    expect({ exit: r.main.exitCode, errors: r.errors }).toEqual({ exit: 0, errors: [] });
    expect(r.outputs['machine-cache-hit']).toBe('true');
    expect(shimCalls()).toBe(initCalls);
    expect(r.log).toContain('podman machine init was not run');
    expect(r.log).not.toMatch(/Cache saved/);
    console.info(`run 2 (restore): main ${r.main.durationMs} ms`);

    const configPath = join(home2, 'cfg/containers/podman/machine/qemu', `${NAME}.json`);
    const config = JSON.parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    const all = strings(config);
    expect(all.filter((s) => s.includes(join(work, 'home1')))).toEqual([]);
    const paths = {
      config: (config.ConfigPath as { Path: string }).Path,
      ignition: (config.IgnitionFilePath as { Path: string }).Path,
      image: (config.ImagePath as { Path: string }).Path,
      identity: config.IdentityPath as string,
    };
    expect(paths).toEqual({
      config: configPath,
      ignition: join(home2, 'cfg/containers/podman/machine/qemu', `${NAME}.ign`),
      image: join(home2, 'data/containers/podman/machine/qemu/machine-os.qcow2.zst'),
      identity: join(home2, '.ssh', NAME),
    });
    for (const p of Object.values(paths)) expect(existsSync(p)).toBe(true);
    // ssh refuses a private key others can read.
    expect((statSync(paths.identity).mode & 0o777).toString(8)).toBe('600');
    expect(statSync(paths.identity).uid).toBe(uid);
    expect(
      JSON.parse(execFileSync('qemu-img', ['info', '--output=json', paths.image], { encoding: 'utf8' })),
    ).toMatchObject({ format: 'qcow2' });

    const ls = podmanAs(env, ['machine', 'ls', '--format', 'json']);
    expect({ out: ls.stdout, err: ls.stderr }).toMatchObject({
      out: expect.stringContaining(`"Name": "${NAME}`) as unknown as string,
    });
    const inspect = podmanAs(env, ['machine', 'inspect', NAME]);
    expect({ status: inspect.status, stderr: inspect.stderr }).toMatchObject({ status: 0 });
    const connections = podmanAs(env, [
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
    await laterRun([runnerTemp]);
    chownSync(runnerTemp, uid, gid);
    const home3 = ownedDir(join(work, 'home3'));
    // XDG_DATA_HOME below a regular file: the disk cannot be placed there.
    writeFileSync(join(home3, 'blocker'), 'keep me');
    chownSync(join(home3, 'blocker'), uid, gid);
    const before = listTree(home3);
    const initCalls = shimCalls();
    const r = await run({ HOME: home3, XDG_DATA_HOME: join(home3, 'blocker', 'data') });
    expect(r.main.exitCode).toBe(1);
    expect(r.errors.join('\n')).toMatch(
      new RegExp(
        `refusing to restore machine '${NAME}': .*blocker is not a directory.*Nothing was changed or deleted`,
      ),
    );
    expect(listTree(home3)).toEqual(before);
    expect(readFileSync(join(home3, 'blocker'), 'utf8')).toBe('keep me');
    expect(shimCalls()).toBe(initCalls);
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
