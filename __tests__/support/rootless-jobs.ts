/**
 * remote-build-env run as the ordinary test user (rootless podman), shared by the rootless e2e files of both
 * podman rows: the host's podman 4.3 (remote-build-env-rootless.test.ts) and podman 5 in the trixie root, entered
 * by pivot_root (remote-build-env-podman5-rootless.test.ts). One describe block's set-up, the job starter and the
 * builds their scenarios share, so a scenario reads the same on both rows.
 */
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { chownSync, mkdtempSync } from 'node:fs';
import { chmod, lstat, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exec } from '../../src/core/exec.js';
import { pathExists } from '../../src/core/files.js';
import { CacheService, laterRun } from './cache-service.js';
import { BUSYBOX_IMAGE, importBusyboxImage } from './images.js';
import { leftovers } from './leftovers.js';
import { createPodmanTestEnv, type PodmanTestEnv } from './podman.js';
import { requireAvailable, stepScripts, testUser, type PodmanVariant, type User } from './podman-matrix.js';
import { startSplitJob, type SplitJob } from './split-job.js';

export const ACTION = 'remote-build-env';

/** The uid:gid a build's non-root RUN steps run as: it maps to a subordinate id on the host. */
export const CONTAINER_USER = '1000:1000';

/** What main saved in state that the scenarios look at. */
export interface StateSeen {
  tmpdir: string;
  removeDirs: string[];
  runtimeDir?: string;
}

export interface RootlessJobs {
  readonly user: User;
  /** The busybox image's name, in the user's store once userImage() ran (import it into a service by this name). */
  readonly image: string;
  /**
   * Imports the busybox image into the user's own store on the first call: that store's first use, which a
   * scenario about a never-used store must come before.
   */
  userImage(): Promise<string>;
  readonly pm: PodmanTestEnv;
  readonly cacheService: CacheService;
  /** A RUNNER_TEMP the runner's user owns (a new one, or `dir` handed over again after laterRun); short (sockets). */
  ownRunnerTemp(dir?: string): string;
  /** Removes `dir` in afterAll (a laterRun's dirs moved aside). */
  removeAfterAll(dir: string): void;
  /** Main as the user, `env` over the podman env and the cache service's; `main` instead of the bundled one. */
  launchJob(
    inputs: Record<string, string>,
    runnerTemp: string,
    env?: Record<string, string | undefined>,
    main?: string,
  ): Promise<SplitJob>;
  /** launchJob with the bundled main, asserting it succeeded. */
  startJob(
    inputs: Record<string, string>,
    runnerTemp: string,
    env?: Record<string, string | undefined>,
  ): Promise<SplitJob>;
  stateOf(job: SplitJob): StateSeen;
  /**
   * One build from `image` (in the user's store or imported into the job's service), two cache mounts: one written
   * as container root, one as CONTAINER_USER; each gets a private (0700) dir holding a 0600 file named `marker`.
   * Returns what each step saw in its dir, and the dir's owner and mode.
   */
  buildTwoMounts(env: Record<string, string>, marker: string): Promise<string[]>;
}

/** Registers the describe block's beforeAll/afterAll; jobs a failed test left unposted are posted in afterAll. */
export function rootlessJobs(podman: PodmanVariant, options: { pivot?: boolean } = {}): RootlessJobs {
  let user: User | undefined;
  let pm: PodmanTestEnv | undefined;
  let cacheService: CacheService | undefined;
  let imported: Promise<string> | undefined;
  const jobs: SplitJob[] = [];
  const dirs: string[] = [];
  const ready = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error('rootlessJobs: used before its beforeAll ran');
    return value;
  };

  beforeAll(async () => {
    requireAvailable(podman);
    user = testUser();
    pm = await createPodmanTestEnv(podman, { user, pivot: options.pivot });
    cacheService = await CacheService.start();
  });

  afterAll(async () => {
    for (const job of jobs) if (!job.posted) await job.post();
    await cacheService?.stop();
    await pm?.remove();
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  const jobsApi: RootlessJobs = {
    get user() {
      return ready(user);
    },
    image: BUSYBOX_IMAGE,
    userImage() {
      imported ??= importBusyboxImage(jobsApi.pm);
      return imported;
    },
    get pm() {
      return ready(pm);
    },
    get cacheService() {
      return ready(cacheService);
    },
    ownRunnerTemp(dir = mkdtempSync(join(tmpdir(), 'ici-rt-'))) {
      chownSync(dir, jobsApi.user.uid, jobsApi.user.gid);
      if (!dirs.includes(dir)) dirs.push(dir);
      return dir;
    },
    removeAfterAll(dir) {
      dirs.push(dir);
    },
    async launchJob(inputs, runnerTemp, env = {}, main = undefined) {
      const { pm, user, cacheService } = jobsApi;
      const job = await startSplitJob({
        action: ACTION,
        ...stepScripts(podman, ACTION, pm.dir, user, { pivot: options.pivot, main }),
        inputs,
        env: { ...pm.env, ...cacheService.env(), ...env },
        runnerTemp,
      });
      jobs.push(job);
      return job;
    },
    async startJob(inputs, runnerTemp, env = {}) {
      const job = await jobsApi.launchJob(inputs, runnerTemp, env);
      expect(job.main.errors).toEqual([]);
      expect(job.main.main.exitCode).toBe(0);
      return job;
    },
    stateOf(job) {
      return JSON.parse(job.main.main.state[ACTION]!) as StateSeen;
    },
    async buildTwoMounts(env, marker) {
      const { pm } = jobsApi;
      const ctx = join(pm.dir, 'ctx');
      await mkdir(ctx, { recursive: true });
      const step = (dir: string, label: string) =>
        `mkdir -p ${dir}/private && touch ${dir}/private/$MARKER && chmod 700 ${dir}/private && ` +
        `chmod 600 ${dir}/private/$MARKER && echo "${label}: $(stat -c '%u:%g %a' ${dir}/private) ` +
        `$(ls ${dir}/private | tr '\\n' ' ')"`;
      await writeFile(
        join(ctx, 'Containerfile'),
        `FROM ${BUSYBOX_IMAGE}\nARG MARKER\n` +
          `RUN --mount=type=cache,target=/c,sharing=locked ${step('/c', 'root')}\n` +
          `USER ${CONTAINER_USER}\n` +
          `RUN --mount=type=cache,target=/u,uid=1000,gid=1000,sharing=locked ${step('/u', 'user')}\n`,
      );
      const r = await pm.podman(['--remote', 'build', '--no-cache', '--build-arg', `MARKER=${marker}`, ctx], {
        env,
        allowFailure: true,
      });
      const seen = r.stdout.split('\n').filter((l) => /^(root|user): /.test(l));
      if (r.exitCode !== 0 || seen.length !== 2) {
        throw new Error(`build ${marker} failed (${r.exitCode}):\n${r.stdout}\n${r.stderr}`);
      }
      return seen.map((l) => l.trim());
    },
  };
  return jobsApi;
}

/** A uid no test process runs as: "another local user" for the socket checks. */
const OTHER_USER: User = { uid: 65534, gid: 65534 };

/** What connecting to the unix socket at `path` as `user` gives: `connected`, or the error code. */
async function connectAs(user: User, path: string): Promise<string> {
  const script =
    "const s = require('node:net').connect(process.argv[1]);" +
    "s.on('connect', () => { console.log('connected'); s.destroy(); });" +
    "s.on('error', (e) => console.log(e.code));";
  const r = await exec(
    'setpriv',
    [`--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups', process.execPath, '-e', script, path],
    { timeoutMs: 30_000 },
  );
  return r.stdout.trim();
}

/**
 * The scenarios both rows run (their titles carry the row's label): the API socket's permissions, cache mounts
 * written as container root and as a non-root container user (also of mode 000), a name that is no UTF-8 in a
 * cache mount.
 */
export function rootlessScenarios(jobs: RootlessJobs): void {
  it('the API socket is the runner’s user’s alone, at its own path and at a chosen one in a dir every user can write: no write bit for others, another uid refused', async () => {
    const { user } = jobs;
    const runnerTemp = jobs.ownRunnerTemp();
    // Like /tmp: the socket's own mode is all that keeps other users out.
    const shared = jobs.ownRunnerTemp(mkdtempSync(join(tmpdir(), 'ici-rs-')));
    await chmod(shared, 0o1777);
    const seen = [];
    const chosen: Record<string, string> = { socket: join(shared, 'build.sock') };
    // The last with the umask of a runner started where files are made for everyone (umask 0).
    for (const [inputs, umask] of [
      [{}, undefined],
      [chosen, undefined],
      [chosen, 0],
    ] as const) {
      const before = umask === undefined ? undefined : process.umask(umask);
      let job;
      try {
        job = await jobs.startJob(inputs, runnerTemp);
      } finally {
        if (before !== undefined) process.umask(before);
      }
      const socket = job.main.outputs.socket!;
      const info = await lstat(socket);
      seen.push({
        socket: info.isSocket(),
        owner: info.uid,
        mode: (info.mode & 0o777).toString(8),
        other: await connectAs(OTHER_USER, socket),
        own: await connectAs(user, socket),
      });
      expect((await job.post()).exitCode).toBe(0);
    }
    const safe = {
      socket: true,
      owner: user.uid,
      // Connecting takes write permission: none for the group or others.
      mode: expect.stringMatching(/^[67][0145][0145]$/),
      other: 'EACCES',
      own: 'connected',
    };
    expect(seen).toEqual([safe, safe, safe]);
    expect(await leftovers(runnerTemp)).toEqual([]);
    expect(await readdir(shared)).toEqual([]);
  });

  it('cache-mounts written as root and as a non-root container user are saved in post, restored (owners and modes) by the next run, and nothing stays behind', async () => {
    const { cacheService } = jobs;
    await jobs.userImage();
    const earlier = cacheService.list().length;
    const runnerTemp = jobs.ownRunnerTemp();
    const inputs = { 'cache-mounts': 'true', 'cache-key': 'rootless' };
    const a = await jobs.startJob(inputs, runnerTemp);
    expect(a.main.outputs['cache-hit']).toBe('false');
    expect(await jobs.buildTwoMounts(a.main.exportedEnv, 'a')).toEqual([
      'root: 0:0 700 a',
      'user: 1000:1000 700 a',
    ]);
    const postA = await a.post();
    expect(postA.warnings).toEqual([]);
    expect(postA.exitCode).toBe(0);
    expect(
      cacheService
        .list()
        .slice(earlier)
        .filter((e) => e.finalized).length,
    ).toBe(1);
    for (const dir of jobs.stateOf(a).removeDirs) expect(await pathExists(dir)).toBe(false);
    expect(await leftovers(runnerTemp)).toEqual([]);

    // The next run: the same RUNNER_TEMP path, its old contents gone (facts.md).
    for (const aside of await laterRun([runnerTemp])) jobs.removeAfterAll(aside);
    jobs.ownRunnerTemp(runnerTemp);
    const b = await jobs.startJob(inputs, runnerTemp);
    expect(b.main.outputs['cache-hit']).toBe('true');
    expect(await jobs.buildTwoMounts(b.main.exportedEnv, 'b')).toEqual([
      'root: 0:0 700 a b',
      'user: 1000:1000 700 a b',
    ]);
    const postB = await b.post();
    expect(postB.warnings).toEqual([]);
    const keys = cacheService
      .list()
      .slice(earlier)
      .map((e) => e.key);
    expect(keys.length).toBe(2);
    expect(await leftovers(runnerTemp)).toEqual([]);

    // Owners and modes restored, then recorded again: a run without builds finds nothing changed.
    for (const aside of await laterRun([runnerTemp])) jobs.removeAfterAll(aside);
    jobs.ownRunnerTemp(runnerTemp);
    const c = await jobs.startJob(inputs, runnerTemp);
    expect(c.main.outputs['cache-matched-key']).toBe(keys[1]);
    const postC = await c.post();
    expect(postC.warnings).toEqual([]);
    expect(postC.lines.map((l) => l.text)).toContain(
      `Cache mounts: unchanged since ${keys[1]}, not saved again.`,
    );
    expect(cacheService.list().length).toBe(earlier + 2);
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  it('a dir and a file of mode 000 made by a non-root container user in a cache mount: the next run’s builds find them as they were (owner, mode, content), its post nothing changed', async () => {
    const { pm } = jobs;
    const image = await jobs.userImage();
    const runnerTemp = jobs.ownRunnerTemp();
    const inputs = { 'cache-mounts': 'true', 'cache-key': 'rootless-locked' };
    const build = async (job: SplitJob, name: string, steps: string) => {
      const ctx = join(pm.dir, `ctx-${name}`);
      await mkdir(ctx, { recursive: true });
      await writeFile(join(ctx, 'Containerfile'), `FROM ${image}\n${steps}`);
      const r = await pm.podman(['--remote', 'build', '--no-cache', ctx], { env: job.main.exportedEnv });
      return r.stdout.split('\n').find((l) => l.startsWith('seen: '));
    };
    const mount = 'RUN --mount=type=cache,target=/u,uid=1000,gid=1000';
    const a = await jobs.startJob(inputs, runnerTemp);
    await build(
      a,
      'locked-a',
      `USER ${CONTAINER_USER}\n${mount} mkdir /u/locked && echo secret > /u/locked/f && chmod 000 /u/locked/f /u/locked\n`,
    );
    expect((await a.post()).warnings).toEqual([]);

    for (const aside of await laterRun([runnerTemp])) jobs.removeAfterAll(aside);
    jobs.ownRunnerTemp(runnerTemp);
    const b = await jobs.startJob(inputs, runnerTemp);
    expect(b.main.outputs['cache-hit']).toBe('true');
    // Container root reads through mode 000 (it holds the namespace's capabilities over the user's ids).
    const seen = await build(
      b,
      'locked-b',
      `${mount} echo "seen: $(stat -c '%a %u:%g' /u/locked /u/locked/f | tr '\\n' ' ')$(cat /u/locked/f)"\n`,
    );
    expect(seen).toBe('seen: 0 1000:1000 0 1000:1000 secret');
    const postB = await b.post();
    expect(postB.warnings).toEqual([]);
    expect(postB.lines.map((l) => l.text)).toContainEqual(
      expect.stringMatching(/^Cache mounts: unchanged since /),
    );
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  it('post run a second time, no XDG_RUNTIME_DIR, isolate-storage, cache mounts of subordinate uids: it finds nothing to do, warns of nothing and starts no pause process again', async () => {
    const runnerTemp = jobs.ownRunnerTemp();
    const inputs = { 'cache-mounts': 'true', 'cache-key': 'rootless-twice', 'isolate-storage': 'true' };
    const job = await jobs.startJob(inputs, runnerTemp, { XDG_RUNTIME_DIR: undefined });
    await importBusyboxImage(jobs.pm, { url: job.main.exportedEnv.CONTAINER_HOST!, name: jobs.image });
    expect(await jobs.buildTwoMounts(job.main.exportedEnv, 't')).toEqual([
      'root: 0:0 700 t',
      'user: 1000:1000 700 t',
    ]);
    expect((await job.post()).warnings).toEqual([]);
    expect(await leftovers(runnerTemp)).toEqual([]);
    const again = await job.post();
    // Before: 'remote-build-env post step: ENOENT: no such file or directory, open
    // '<RUNNER_TEMP>/ici-…/unshare-storage.conf'' (a `podman unshare` to start the pause process of the runtime dir
    // the first post had removed).
    expect(again.warnings).toEqual([]);
    expect(again.exitCode).toBe(0);
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  it('a dir named in bytes that are no UTF-8, made by a non-root container user in a cache mount: post leaves it out and saves the rest', async () => {
    const { pm, cacheService } = jobs;
    const image = await jobs.userImage();
    const runnerTemp = jobs.ownRunnerTemp();
    const inputs = { 'cache-mounts': 'true', 'cache-key': 'rootless-name' };
    const a = await jobs.startJob(inputs, runnerTemp);
    const ctx = join(pm.dir, 'ctx-name');
    await mkdir(ctx, { recursive: true });
    await writeFile(
      join(ctx, 'Containerfile'),
      `FROM ${image}\nUSER ${CONTAINER_USER}\n` +
        'RUN --mount=type=cache,target=/u,uid=1000,gid=1000 d="/u/$(printf \'d\\377\')" && ' +
        'mkdir "$d" && echo x > "$d/f" && echo kept > /u/kept\n',
    );
    await pm.podman(['--remote', 'build', '--no-cache', ctx], { env: a.main.exportedEnv });
    const saved = cacheService.list().length;
    const post = await a.post();
    // Before (e127448): the owners walk (names as text) never handed the dir over, so removing it failed and the
    // whole save was given up ('cache mounts not saved: EACCES: ...').
    expect(post.warnings).toEqual([]);
    // Buildah names the mount's dir after its target (podman 4.3) or a hash of it (podman 5).
    expect(post.lines.map((l) => l.text).join('\n')).toMatch(
      /not saving 1 FIFO.*: (u|[0-9a-f]{16})\/d\uFFFD\./,
    );
    expect(cacheService.list().length).toBe(saved + 1);
    expect(await leftovers(runnerTemp)).toEqual([]);
  });
}
