import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MARK_ANNOTATION, UNMARKABLE } from '../../src/actions/remote-build-env/container-mark.js';
import {
  identify,
  isRunning,
  type ProcessIdentity,
} from '../../src/actions/remote-build-env/process-group.js';
import { REPO_ROOT } from '../support/harness.js';
import { leftovers } from '../support/leftovers.js';
import { CacheService, laterRun } from '../support/cache-service.js';
import { importBusyboxImage } from '../support/images.js';
import { exec } from '../../src/core/exec.js';
import { pathExists } from '../../src/core/files.js';
import { createPodmanTestEnv, type PodmanTestEnv } from '../support/podman.js';
import {
  buildahCacheDir,
  mountsUnder,
  podmanVersions,
  requireAvailable,
  stepScripts,
} from '../support/podman-matrix.js';
import { startSplitJob, type SplitJob } from '../support/split-job.js';

const ACTION = 'remote-build-env';

let pm: PodmanTestEnv;
let image: string;
const runnerTemps: string[] = [];
/** Every job started: afterAll runs the post of those not posted, so a failed assertion never leaks a service. */
const jobs: Job[] = [];

interface Job extends SplitJob {
  runnerTemp: string;
}

/** Short (socket paths), under the run's TMPDIR (the leftovers check lists it), and removed after the tests. */
function newRunnerTemp(): string {
  const dir = mkdtempSync(join(tmpdir(), 'ici-rt-'));
  runnerTemps.push(dir);
  return dir;
}

/** Runs a job's main step now and leaves its post for later, so two jobs can overlap. `on`: whose podman. */
async function startJob(
  inputs: Record<string, string>,
  env: Record<string, string> = {},
  runnerTemp = newRunnerTemp(),
  on: PodmanTestEnv = pm,
): Promise<Job> {
  const scripts = stepScripts(on.variant, ACTION, on.dir);
  const split = await startSplitJob({
    action: ACTION,
    ...scripts,
    inputs,
    env: { ...on.env, ...env },
    runnerTemp,
  });
  const job = Object.assign(split, { runnerTemp });
  jobs.push(job);
  return job;
}

interface LocalStateSeen {
  socket: string;
  tmpdir: string;
  removeDirs: string[];
  service?: ProcessIdentity;
}

function stateOf(job: Job): LocalStateSeen {
  return JSON.parse(job.main.main.state[ACTION]!) as LocalStateSeen;
}

async function contextDir(name: string, body: string, on: PodmanTestEnv = pm): Promise<string> {
  const dir = join(on.dir, `ctx-${name}`);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'Containerfile'), body);
  return dir;
}

/** A build whose cache-mount step writes a job-unique file and lists what the cache mount holds. */
async function buildWritingMarker(
  env: Record<string, string>,
  marker: string,
  on: PodmanTestEnv = pm,
  from = image,
): Promise<string[]> {
  const ctx = await contextDir(
    'marker',
    `FROM ${from}\nARG MARKER\n` +
      "RUN --mount=type=cache,target=/c,sharing=locked touch /c/$MARKER && echo \"listing: $(ls /c | grep -v lockfile | tr '\\n' ' ')\"\n",
    on,
  );
  const r = await on.podman(['--remote', 'build', '--no-cache', '--build-arg', `MARKER=${marker}`, ctx], {
    env,
  });
  const line = r.stdout.split('\n').find((l) => l.startsWith('listing: '));
  if (!line) throw new Error(`no listing in build output:\n${r.stdout}\n${r.stderr}`);
  return line.slice('listing: '.length).trim().split(/\s+/).sort();
}

async function expectNoLeaks(state: LocalStateSeen, on: PodmanTestEnv = pm): Promise<void> {
  if (state.service) expect(await isRunning(state.service)).toBe(false);
  expect(await pathExists(state.socket)).toBe(false);
  for (const dir of state.removeDirs) expect(await pathExists(dir)).toBe(false);
  for (const dir of state.removeDirs) expect(mountsUnder(on.variant, dir)).toEqual([]);
}

/** Runs the post of every job not posted yet: a failed assertion must never leak a service. */
async function postUnposted(): Promise<void> {
  for (const job of jobs) if (!job.posted) await job.post();
}

beforeAll(async () => {
  pm = await createPodmanTestEnv();
  image = await importBusyboxImage(pm);
});
afterAll(async () => {
  await postUnposted();
  await pm?.remove();
  for (const dir of runnerTemps) await rm(dir, { recursive: true, force: true });
});

describe('remote-build-env, mode local (real podman services)', () => {
  it('gives two jobs running at the same time private cache mounts, and leaves nothing behind', async () => {
    const [a, b] = await Promise.all([startJob({}), startJob({})]);
    for (const job of [a, b]) {
      expect(job.main.main.exitCode).toBe(0);
      expect(job.main.exportedEnv.CONTAINER_HOST).toBe(`unix://${job.main.outputs.socket}`);
      expect(job.main.outputs['container-host']).toBe(job.main.exportedEnv.CONTAINER_HOST);
      expect(job.main.outputs['cache-dir']).toBe(join(job.main.outputs.tmpdir!, 'buildah-cache'));
      expect(job.main.exportedEnv.DOCKER_HOST).toBeUndefined();
    }
    expect(a.main.outputs.socket).not.toBe(b.main.outputs.socket);
    // The main steps' node processes have exited; the services must still answer later steps.
    const [seenByA, seenByB] = await Promise.all([
      buildWritingMarker(a.main.exportedEnv, 'job-a'),
      buildWritingMarker(b.main.exportedEnv, 'job-b'),
    ]);
    expect(seenByA).toEqual(['job-a']);
    expect(seenByB).toEqual(['job-b']);

    const [stateA, stateB] = [stateOf(a), stateOf(b)];
    expect(await isRunning(stateA.service!)).toBe(true);
    const [postA, postB] = await Promise.all([a.post(), b.post()]);
    expect(postA.exitCode).toBe(0);
    expect(postB.exitCode).toBe(0);
    expect(postA.warnings).toEqual([]);
    await expectNoLeaks(stateA);
    await expectNoLeaks(stateB);
    // Nothing failed, so the service log stays folded away.
    expect(postA.lines.some((l) => l.text.startsWith('::group::podman service log'))).toBe(false);
    // Post is idempotent: a second run finds nothing to do and does not fail.
    expect((await a.post()).exitCode).toBe(0);
  });

  it('cache-mounts: two instances with one cache-key at once (one RUNNER_TEMP) each keep their own live cache mounts, and both save', async () => {
    const cacheService = await CacheService.start();
    try {
      const runnerTemp = newRunnerTemp();
      const env = cacheService.env();
      const inputs = { 'cache-mounts': 'true', 'cache-key': 'e2e-one-key' };
      const a = await startJob(inputs, env, runnerTemp);
      expect(a.main.main.exitCode).toBe(0);
      expect(await buildWritingMarker(a.main.exportedEnv, 'job-a')).toEqual(['job-a']);
      const b = await startJob(inputs, env, runnerTemp);
      expect(b.main.main.exitCode).toBe(0);
      // B's start must not have touched what A's builds are using.
      expect(await buildWritingMarker(a.main.exportedEnv, 'job-a2')).toEqual(['job-a', 'job-a2']);
      expect(b.main.outputs.tmpdir).not.toBe(a.main.outputs.tmpdir);
      expect(await buildWritingMarker(b.main.exportedEnv, 'job-b')).toEqual(['job-b']);
      const [postA, postB] = await Promise.all([a.post(), b.post()]);
      expect([postA.warnings, postB.warnings]).toEqual([[], []]);
      expect(cacheService.list().filter((e) => e.finalized).length).toBe(2);
      await expectNoLeaks(stateOf(a));
      await expectNoLeaks(stateOf(b));
      expect(await leftovers(runnerTemp)).toEqual([]);
    } finally {
      await cacheService.stop();
    }
  });

  it('WITHOUT the action: two clients of one shared service see each other’s cache-mount files (the collision)', async () => {
    const shared = await pm.startService({ name: 'shared' });
    try {
      const env = { CONTAINER_HOST: shared.url };
      const first = await buildWritingMarker(env, 'job-a');
      const second = await buildWritingMarker(env, 'job-b');
      expect(first).toEqual(['job-a']);
      expect(second).toEqual(['job-a', 'job-b']);
    } finally {
      await shared.stop();
    }
  });

  it('isolate-storage (and a chosen socket path) gives the service its own image store, removed with its mounts in post', async () => {
    const runnerTemp = newRunnerTemp();
    const socket = join(runnerTemp, 'chosen', 'dir', 'build.sock');
    const job = await startJob(
      { 'isolate-storage': 'true', 'export-docker-host': 'true', socket },
      {},
      runnerTemp,
    );
    expect(job.main.main.exitCode).toBe(0);
    expect(job.main.outputs.socket).toBe(socket);
    const url = job.main.exportedEnv.CONTAINER_HOST!;
    expect(job.main.exportedEnv.DOCKER_HOST).toBe(url);
    const state = stateOf(job);
    const images = await pm.remote(url, ['images', '--format', '{{.Repository}}']);
    expect(images.stdout.trim()).toBe(''); // the shared test store holds the busybox image; this one does not
    await importBusyboxImage(pm, { url, name: image });
    const info = await pm.remote(url, ['info', '--format', '{{.Store.GraphRoot}}']);
    expect(info.stdout.trim().startsWith(job.runnerTemp)).toBe(true);
    // A container left running in the private store must not keep the post step from cleaning up.
    await pm.remote(url, ['run', '-d', image, 'sleep', '600']);
    const post = await job.post();
    expect(post.exitCode).toBe(0);
    await expectNoLeaks(state);
    expect(await pathExists(join(runnerTemp, 'chosen'))).toBe(false);
  });

  it('post removes a dozen containers that ignore SIGTERM (sleep as PID 1), each given its stop time: isolate-storage’s before its store goes, and the shared store’s (the two jobs at once)', async () => {
    const dozen = (url: string) =>
      Promise.all(
        Array.from({ length: 13 }, async () =>
          (await pm.remote(url, ['run', '-d', image, 'sleep', '600'])).stdout.trim(),
        ),
      );
    const isolated = async () => {
      const job = await startJob({ 'isolate-storage': 'true' });
      const url = job.main.exportedEnv.CONTAINER_HOST!;
      await importBusyboxImage(pm, { url, name: image });
      await dozen(url);
      const state = stateOf(job);
      const post = await job.post();
      expect(post.exitCode).toBe(0);
      expect(post.warnings).toEqual([]);
      await expectNoLeaks(state);
    };
    const shared = async () => {
      const job = await startJob({});
      const ours = await dozen(job.main.exportedEnv.CONTAINER_HOST!);
      try {
        const post = await job.post();
        expect(post.exitCode).toBe(0);
        const left = (await pm.podman(['ps', '--all', '--quiet', '--no-trunc'])).stdout.split('\n');
        expect({
          containersLeft: ours.filter((id) => left.includes(id)).length,
          warnings: post.warnings,
        }).toEqual({
          containersLeft: 0,
          warnings: [],
        });
      } finally {
        await pm.podman(['rm', '--force', '--time', '0', ...ours], { allowFailure: true });
      }
    };
    await Promise.all([isolated(), shared()]);
  });

  it('a chosen socket path with %, # and a space: podman (CONTAINER_HOST, URL-encoded) and docker (DOCKER_HOST, raw) both reach the service', async () => {
    const runnerTemp = newRunnerTemp();
    const socket = join(runnerTemp, 'a%25b#c d', 'build.sock');
    const job = await startJob({ socket, 'export-docker-host': 'true' }, {}, runnerTemp);
    expect(job.main.main.exitCode).toBe(0);
    expect(job.main.exportedEnv.CONTAINER_HOST).toBe(`unix://${runnerTemp}/a%2525b%23c%20d/build.sock`);
    expect(job.main.exportedEnv.DOCKER_HOST).toBe(`unix://${socket}`);
    expect(await buildWritingMarker(job.main.exportedEnv, 'odd-path')).toEqual(['odd-path']);
    const docker = await exec('docker', ['version', '--format', '{{.Server.Os}}'], {
      timeoutMs: 60_000,
      env: { ...process.env, DOCKER_HOST: job.main.exportedEnv.DOCKER_HOST! },
    });
    expect(docker.stdout.trim()).toBe('linux');
    const state = stateOf(job);
    expect((await job.post()).exitCode).toBe(0);
    await expectNoLeaks(state);
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  it('a socket path docker cannot take (a % that starts no escape) with export-docker-host is an input error; without, podman still works', async () => {
    const runnerTemp = newRunnerTemp();
    const socket = join(runnerTemp, '100%', 'build.sock');
    const refused = await startJob({ socket, 'export-docker-host': 'true' }, {}, runnerTemp);
    expect(refused.main.main.exitCode).toBe(2);
    expect(refused.main.errors[0]).toBe(
      `Input 'export-docker-host': the docker CLI cannot use the socket path '${socket}' (it holds a '%' that starts no URL escape, or a control character); set \`socket\` to a path without them, or turn \`export-docker-host\` off.`,
    );
    expect((await refused.post()).exitCode).toBe(0);
    const job = await startJob({ socket }, {}, runnerTemp);
    expect(job.main.main.exitCode).toBe(0);
    expect(job.main.exportedEnv.CONTAINER_HOST).toBe(`unix://${runnerTemp}/100%25/build.sock`);
    expect(await buildWritingMarker(job.main.exportedEnv, 'percent')).toEqual(['percent']);
    expect((await job.post()).exitCode).toBe(0);
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  it('post removes the dirs it made for a chosen socket only while empty: a file put there later stays, with a warning', async () => {
    const runnerTemp = newRunnerTemp();
    const socket = join(runnerTemp, 'made', 'below', 'build.sock');
    const job = await startJob({ socket }, {}, runnerTemp);
    expect(job.main.main.exitCode).toBe(0);
    const theirs = join(runnerTemp, 'made', 'theirs.txt');
    await writeFile(theirs, 'not the action’s\n');
    const post = await job.post();
    expect(post.exitCode).toBe(0);
    expect(post.warnings).toEqual([
      `left ${join(runnerTemp, 'made')} (made for the socket): it holds files this run did not put there.`,
    ]);
    expect(await readFile(theirs, 'utf8')).toBe('not the action’s\n');
    expect(await pathExists(join(runnerTemp, 'made', 'below'))).toBe(false);
    await expectNoLeaks(stateOf(job));
    await rm(join(runnerTemp, 'made'), { recursive: true });
    expect(await leftovers(runnerTemp)).toEqual([]);
  });

  it('a service that cannot start (bad containers.conf) fails main with its log, and post still cleans up', async () => {
    const conf = join(pm.dir, 'broken.conf');
    await writeFile(conf, '[engine\nruntime = \n');
    const job = await startJob({ 'containers-conf': conf });
    expect(job.main.main.exitCode).toBe(1);
    expect(job.main.errors.join('\n')).toMatch(/exited with code \d+ before it answered/);
    const state = stateOf(job);
    expect(state.service).toBeDefined();
    const post = await job.post();
    expect(post.exitCode).toBe(0);
    expect(
      post.lines.some((l) => l.text.startsWith('::group::podman service log (the main step did not finish)')),
    ).toBe(true);
    await expectNoLeaks(state);
  });

  it('a containers-conf in unusual TOML (the containers table named in quotes) still starts the service: the mark is left out of it, not made invalid', async () => {
    const conf = join(pm.dir, 'quoted.conf');
    // The test conf with its [containers] header in another form TOML allows. The host's podman (4.3) gets a
    // marked copy of this file, where podman 4.8 on would get a module and leave it as it is.
    const text = await readFile(pm.env.CONTAINERS_CONF!, 'utf8');
    expect(text).toContain('[containers]');
    await writeFile(conf, text.replace('[containers]', '["containers"]'));
    const job = await startJob({ 'containers-conf': conf });
    expect({ exitCode: job.main.main.exitCode, errors: job.main.errors }).toEqual({
      exitCode: 0,
      errors: [],
    });
    expect(job.main.main.lines.map((l) => l.text)).toContain(
      `Containers the job makes in the shared store get no mark (${conf} ${UNMARKABLE}): post finds only those still running.`,
    );
    const post = await job.post();
    expect(post.warnings).toEqual([]);
    await expectNoLeaks(stateOf(job));
  });

  describe.each(podmanVersions())('[$label]', (podman) => {
    let on: PodmanTestEnv;
    let from: string;
    beforeAll(async () => {
      requireAvailable(podman);
      on = await createPodmanTestEnv(podman);
      from = await importBusyboxImage(on);
    });
    afterAll(async () => {
      await postUnposted();
      await on?.remove();
    });

    it('shared store: post removes the containers the job made through its service, running, exited or only created, and no one else’s', async () => {
      const all = async () =>
        (await on.podman(['ps', '--all', '--quiet', '--no-trunc'])).stdout.split('\n').filter(Boolean);
      const others: string[] = [];
      try {
        // Another client's container, made before the job and restarted through its service.
        others.push((await on.podman(['create', from, 'sleep', '600'])).stdout.trim());
        const job = await startJob({}, {}, newRunnerTemp(), on);
        expect(job.main.main.exitCode).toBe(0);
        const url = job.main.exportedEnv.CONTAINER_HOST!;
        await on.remote(url, [
          'run',
          '-d',
          '--name',
          'ici-job-db',
          '--stop-signal',
          'KILL',
          from,
          'sleep',
          '600',
        ]);
        await on.remote(url, ['start', others[0]!]);
        // A database that crashed (no conmon left by post) and one only created: no process to read a mark from.
        await on.remote(url, ['run', '--name', 'ici-job-crashed', from, 'false'], { allowFailure: true });
        await on.remote(url, ['create', '--name', 'ici-job-created', from, 'sleep', '600']);
        const ours = ['ici-job-db', 'ici-job-crashed', 'ici-job-created'];
        // Beside the job in the same store, not through its service: running, exited, and one that guesses the
        // annotation's value from what the job makes public (its TMPDIR).
        others.push((await on.podman(['run', '-d', from, 'sleep', '600'])).stdout.trim());
        await on.podman(['run', '--name', 'ici-other-exited', from, 'true']);
        others.push('ici-other-exited');
        const guess = `${MARK_ANNOTATION}=${job.main.outputs.tmpdir!}`;
        others.push((await on.podman(['create', '--annotation', guess, from, 'true'])).stdout.trim());
        const idsOf = async (names: string[]) =>
          (await on.podman(['inspect', '--format', '{{.Id}}', ...names])).stdout.split('\n').filter(Boolean);
        const [ourIds, otherIds] = [await idsOf(ours), await idsOf(others)];
        expect(await all()).toEqual(expect.arrayContaining([...ourIds, ...otherIds]));
        const post = await job.post();
        expect(post.exitCode).toBe(0);
        expect(post.warnings).toEqual([]);
        const removed = post.lines.find((l) => l.text.startsWith('Removed '))?.text;
        const after = await all();
        expect({ removed, oursLeft: ourIds.filter((id) => after.includes(id)) }).toEqual({
          removed: expect.stringMatching(/^Removed 3 container\(s\) this job made through the service: /),
          oursLeft: [],
        });
        expect(after).toEqual(expect.arrayContaining(otherIds));
        await expectNoLeaks(stateOf(job), on);
      } finally {
        if (others.length)
          await on.podman(['rm', '--force', '--time', '0', ...others], { allowFailure: true });
        await on.podman(
          ['rm', '--force', '--time', '0', 'ici-job-db', 'ici-job-crashed', 'ici-job-created'],
          {
            allowFailure: true,
          },
        );
      }
    });

    it('the service killed during the job: post removes what the job made with podman itself, in the shared store and in a private one, saying the service was gone', async () => {
      const killService = (job: Job) => process.kill(stateOf(job).service!.pid, 'SIGKILL');
      const gone = (job: Job) =>
        `The podman service (pid ${stateOf(job).service!.pid}) was gone before post: the job's containers are removed by podman itself, on the service's store.`;
      const shared = async () => {
        const job = await startJob({}, {}, newRunnerTemp(), on);
        const url = job.main.exportedEnv.CONTAINER_HOST!;
        const names = ['ici-gone-db', 'ici-gone-created'];
        try {
          await on.remote(url, [
            'run',
            '-d',
            '--name',
            names[0]!,
            '--stop-signal',
            'KILL',
            from,
            'sleep',
            '600',
          ]);
          await on.remote(url, ['create', '--name', names[1]!, from, 'true']);
          killService(job);
          const post = await job.post();
          const left = await on.podman(['ps', '--all', '--format', '{{.Names}}']);
          expect({
            gone: post.lines.some((l) => l.text === gone(job)),
            left: names.filter((n) => left.stdout.split('\n').includes(n)),
            warnings: post.warnings,
          }).toEqual({ gone: true, left: [], warnings: [] });
          await expectNoLeaks(stateOf(job), on);
        } finally {
          await on.podman(['rm', '--force', '--time', '0', ...names], { allowFailure: true });
        }
      };
      const isolated = async () => {
        const job = await startJob({ 'isolate-storage': 'true' }, {}, newRunnerTemp(), on);
        const url = job.main.exportedEnv.CONTAINER_HOST!;
        await importBusyboxImage(on, { url, name: from });
        const id = (
          await on.remote(url, ['run', '-d', '--stop-signal', 'KILL', from, 'sleep', '600'])
        ).stdout.trim();
        const pids = (
          await on.remote(url, ['inspect', '--format', '{{.State.ConmonPid}} {{.State.Pid}}', id])
        ).stdout
          .trim()
          .split(' ')
          .map(Number);
        const processes = await Promise.all(pids.map((pid) => identify(pid)));
        killService(job);
        const post = await job.post();
        expect(post.lines.some((l) => l.text === gone(job))).toBe(true);
        // conmon and the container's process would outlive the store they ran from.
        expect(await Promise.all(processes.map((p) => isRunning(p)))).toEqual([false, false]);
        await expectNoLeaks(stateOf(job), on);
      };
      await Promise.all([shared(), isolated()]);
    });

    it('shared store: post also removes a paused container, a pod the job started (its infra container goes only with the pod), and the infra-less pod and network it made for its containers, with their anonymous volumes, but no named volume nor a network made before it or beside it, nor a pod or network a neighbour put a container in', async () => {
      // An infra image of our own: podman 5's default one needs catatonit, which this machine's root lacks.
      const ctx = await contextDir('infra', `FROM ${from}\nSTOPSIGNAL SIGKILL\nCMD ["sleep", "600"]\n`, on);
      await on.podman(['build', '--quiet', '-t', 'localhost/ici-infra', ctx]);
      const networks = ['ici-job-net', 'ici-other-net', 'ici-other-late', 'ici-job-joined'];
      // A network someone made before the job, which the job's container joins too.
      await on.podman(['network', 'create', networks[1]!]);
      const job = await startJob({}, {}, newRunnerTemp(), on);
      const url = job.main.exportedEnv.CONTAINER_HOST!;
      const pod = (
        await on.remote(url, [
          'pod',
          'create',
          '--name',
          'ici-job-pod',
          '--infra-image',
          'localhost/ici-infra',
        ])
      ).stdout.trim();
      try {
        // `-v /data`: an anonymous volume, as a database image's VOLUME makes one for every container.
        const run = async (args: string[]) =>
          (
            await on.remote(url, [
              'run',
              '-d',
              '--stop-signal',
              'KILL',
              '-v',
              '/data',
              ...args,
              from,
              'sleep',
              '600',
            ])
          ).stdout.trim();
        const ours = [
          await run(['--pod', pod]),
          await run(['--name', 'ici-job-paused', '-v', 'ici-job-named:/named']),
        ];
        await on.remote(url, ['pause', 'ici-job-paused']);
        // As compose makes one network per project. Never started: nothing here tests container networking.
        await on.remote(url, ['network', 'create', networks[0]!]);
        await on.podman(['network', 'create', networks[2]!]);
        await on.remote(url, ['network', 'create', networks[3]!]);
        const joined = ['--network', networks[0]!, '--network', networks[1]!, '--network', networks[3]!];
        await on.remote(url, ['create', '--name', 'ici-job-netted', ...joined, from, 'true']);
        // A neighbour's container in a network the job made: the network must stay for it.
        await on.podman(['create', '--name', 'ici-other-joined', '--network', networks[3]!, from, 'true']);
        await on.remote(url, ['pod', 'create', '--infra=false', '--name', 'ici-job-bare']);
        await on.remote(url, ['create', '--name', 'ici-job-bare-c', '--pod', 'ici-job-bare', from, 'true']);
        await on.remote(url, ['pod', 'create', '--infra=false', '--name', 'ici-job-bare2']);
        await on.remote(url, ['create', '--name', 'ici-job-bare2-c', '--pod', 'ici-job-bare2', from, 'true']);
        // A neighbour's containers, never started, in the job's infra-less pod and in another pod the job started:
        // removing either pod would take them along.
        await on.podman(['create', '--name', 'ici-other-in-bare', '--pod', 'ici-job-bare', from, 'true']);
        const shared = (
          await on.remote(url, [
            'pod',
            'create',
            '--name',
            'ici-job-shared',
            '--infra-image',
            'localhost/ici-infra',
          ])
        ).stdout.trim();
        await on.podman(['create', '--name', 'ici-other-in-pod', '--pod', shared, from, 'true']);
        const volumesOf = async (id: string) =>
          (await on.podman(['inspect', '--format', '{{range .Mounts}}{{.Name}} {{end}}', id])).stdout.split(
            ' ',
          );
        const anonymous = (await Promise.all(ours.map(volumesOf)))
          .flat()
          .filter((v) => /^[0-9a-f]{64}$/.test(v));
        expect(anonymous).toHaveLength(2);
        const post = await job.post();
        expect(post.exitCode).toBe(0);
        const left = (await on.podman(['ps', '--all', '--quiet', '--no-trunc'])).stdout.split('\n');
        const podLeft = (await on.podman(['pod', 'exists', pod], { allowFailure: true })).exitCode === 0;
        const volumes = (await on.podman(['volume', 'ls', '--quiet'])).stdout.split('\n');
        const exists = async (args: string[]) =>
          (await on.podman([...args], { allowFailure: true })).exitCode === 0;
        const networksLeft: string[] = [];
        for (const n of networks) if (await exists(['network', 'exists', n])) networksLeft.push(n);
        expect({
          containersLeft: ours.filter((id) => left.includes(id)),
          podLeft,
          barePodLeft: await exists(['pod', 'exists', 'ici-job-bare']),
          bare2PodLeft: await exists(['pod', 'exists', 'ici-job-bare2']),
          sharedPodLeft: await exists(['pod', 'exists', shared]),
          othersLeft: [
            await exists(['container', 'exists', 'ici-other-in-bare']),
            await exists(['container', 'exists', 'ici-other-in-pod']),
            await exists(['container', 'exists', 'ici-other-joined']),
          ],
          jobBareLeft: await exists(['container', 'exists', 'ici-job-bare-c']),
          networksLeft,
          anonymousVolumesLeft: anonymous.filter((v) => volumes.includes(v)),
          warnings: post.warnings,
        }).toEqual({
          containersLeft: [],
          podLeft: false,
          barePodLeft: true,
          bare2PodLeft: false,
          sharedPodLeft: true,
          othersLeft: [true, true, true],
          jobBareLeft: false,
          networksLeft: networks.slice(1),
          anonymousVolumesLeft: [],
          warnings: [],
        });
        expect(post.lines.map((l) => l.text)).toContain(
          'Removed what was made for them and is now unused: pod ici-job-bare2, network ici-job-net.',
        );
        expect(post.lines.map((l) => l.text)).toContain(
          `Left the infra container(s) ${shared.slice(0, 12)}-infra of the job's pods, which hold containers the job did not make.`,
        );
        expect(volumes).toContain('ici-job-named');
        await expectNoLeaks(stateOf(job), on);
      } finally {
        await on.podman(['pod', 'rm', '--force', '--time', '0', pod], { allowFailure: true });
        await on.podman(['rm', '--force', '--time', '0', 'ici-job-paused'], { allowFailure: true });
        await on.podman(['volume', 'rm', '--force', 'ici-job-named'], { allowFailure: true });
        for (const p of ['ici-job-bare', 'ici-job-bare2', 'ici-job-shared'])
          await on.podman(['pod', 'rm', '--force', p], { allowFailure: true });
        await on.podman(['rm', '--force', 'ici-job-netted', 'ici-other-joined'], { allowFailure: true });
        await on.podman(['network', 'rm', '--force', ...networks], { allowFailure: true });
      }
    });

    it('cache-mounts: job A saves its cache mounts in post; a later run restores them and its build sees A’s file', async () => {
      const cacheService = await CacheService.start();
      try {
        const runnerTemp = newRunnerTemp();
        const env = cacheService.env();
        const inputs = { 'cache-mounts': 'true', 'cache-key': 'e2e-mounts' };
        const a = await startJob(inputs, env, runnerTemp, on);
        expect(a.main.main.exitCode).toBe(0);
        expect(a.main.outputs['cache-hit']).toBe('false');
        expect(a.main.outputs['cache-dir']).toBe(buildahCacheDir(podman, a.main.outputs.tmpdir!));
        expect(await buildWritingMarker(a.main.exportedEnv, 'job-a', on, from)).toEqual(['job-a']);
        const postA = await a.post();
        expect(postA.warnings).toEqual([]);
        const saved = cacheService.list().filter((e) => e.finalized);
        expect(saved.map((e) => e.key)).toEqual([
          expect.stringMatching(/^e2e-mounts-Linux-X64-[0-9a-f]{16}$/),
        ]);
        await expectNoLeaks(stateOf(a), on);

        // The next run: same RUNNER_TEMP path (cache versions hash the path), its old contents gone.
        runnerTemps.push(...(await laterRun([runnerTemp])));
        const b = await startJob(inputs, env, runnerTemp, on);
        expect(b.main.outputs['cache-hit']).toBe('true');
        expect(b.main.outputs['cache-matched-key']).toBe(saved[0]!.key);
        expect(await buildWritingMarker(b.main.exportedEnv, 'job-b', on, from)).toEqual(['job-a', 'job-b']);
        await b.post();
        const keys = cacheService.list().map((e) => e.key);
        expect(keys.length).toBe(2);

        // A run whose builds do not touch the cache mounts saves nothing new.
        runnerTemps.push(...(await laterRun([runnerTemp])));
        const c = await startJob(inputs, env, runnerTemp, on);
        expect(c.main.outputs['cache-matched-key']).toBe(keys[1]);
        const postC = await c.post();
        expect(postC.lines.map((l) => l.text)).toContain(
          `Cache mounts: unchanged since ${keys[1]}, not saved again.`,
        );
        expect(cacheService.list().length).toBe(2);
      } finally {
        await cacheService.stop();
      }
    });
  });

  it('CLI: `image-ci remote-build-env` keeps the service up until interrupted, then cleans up', async () => {
    const runnerTemp = newRunnerTemp();
    const cli = spawn(process.execPath, [join(REPO_ROOT, 'dist/cli.js'), ACTION], {
      env: { ...process.env, ...pm.env, RUNNER_TEMP: runnerTemp, NODE_OPTIONS: '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const exited = new Promise<number | null>((resolve) => cli.on('close', (code) => resolve(code)));
    const ready = new Promise<string>((resolve, reject) => {
      const check = () => {
        const m = /^container-host=(.+)$/m.exec(stdout);
        if (m && stderr.includes('Press Ctrl-C')) resolve(m[1]!);
      };
      cli.stdout.on('data', (c: Buffer) => {
        stdout += c.toString();
        check();
      });
      cli.stderr.on('data', (c: Buffer) => {
        stderr += c.toString();
        check();
      });
      void exited.then((code) => reject(new Error(`CLI exited early (${code}):\n${stdout}\n${stderr}`)));
    });
    let url: string;
    try {
      url = await ready;
      const info = await pm.remote(url, ['info', '--format', '{{.Version.Version}}']);
      expect(info.stdout.trim()).toMatch(/^\d+\.\d+/);
    } finally {
      cli.kill('SIGINT'); // also when an assertion failed: the CLI's post stops the service
    }
    expect(await exited).toBe(0);
    expect(stderr).toContain('stopped.');
    expect(await pathExists(url.replace('unix://', ''))).toBe(false);
  });

  it('reports bad inputs as input errors naming the input', async () => {
    const longSocket = await startJob({ socket: `/tmp/${'s'.repeat(120)}.sock` });
    expect(longSocket.main.main.exitCode).toBe(2);
    expect(longSocket.main.errors[0]).toMatch(
      /^Input 'socket': the socket path .* is 130 bytes, but linux allows at most 107/,
    );
    const badEscape = await startJob({
      mode: 'ssh',
      host: 'ssh://ci@build.example/run/100%.sock',
      'ssh-key': 'K',
    });
    expect(badEscape.main.main.exitCode).toBe(2);
    expect(badEscape.main.errors[0]).toMatch(
      /^Input 'host': has a socket path with a '%' that starts no valid escape \(write a literal % as %25\)/,
    );
    const longTemp = join(newRunnerTemp(), 'a-runner-temp-long-enough-for-podman');
    await mkdir(longTemp);
    const isolated = await startJob({ 'isolate-storage': 'true' }, {}, longTemp);
    expect(isolated.main.main.exitCode).toBe(2);
    expect(isolated.main.errors[0]).toMatch(
      /^Input 'isolate-storage': podman refuses a runroot longer than 50 characters, and below RUNNER_TEMP it would be '.*' \(\d+\); run with a shorter RUNNER_TEMP or without isolate-storage\.$/,
    );
    expect((await isolated.post()).exitCode).toBe(0);
    expect(await leftovers(longTemp)).toEqual([]);
    const unreadable = await startJob({ 'containers-conf': join(pm.dir, 'missing.conf') });
    expect(unreadable.main.main.exitCode).toBe(2);
    expect(unreadable.main.errors[0]).toMatch(/^Input 'containers-conf': cannot read/);
  });
});
