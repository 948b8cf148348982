/**
 * preseed-podman-vm's main SIGKILLed while it downloads a disk (from a real docker-registry, through a relay
 * that throttles the blob so the download spans many kill points), each time followed by post as a separate
 * process: nothing may be left in RUNNER_TEMP but a complete image (and its record), nothing but a complete file
 * where podman looks for its image, and a later run on the same paths must work.
 */
import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mapLimit } from '../../src/core/pool.js';
import { killMainOptions, leftovers, processesMentioning } from '../support/leftovers.js';
import { buildMachineOsLayout, publishMachineOs, type FakeMachineOs } from '../support/machine-os.js';
import { startProxy, type CountingProxy } from '../support/proxy.js';
import { startRegistry, type RegistryService } from '../support/registry.js';
import { REPO_ROOT } from '../support/harness.js';
import { startSplitJob } from '../support/split-job.js';

const ACTION = 'preseed-podman-vm';
const REPO = 'podman/machine-os';
const DISK_BYTES = 2 * 1024 * 1024;
/** The line main prints once the registry has named the disk, right before the download starts. */
const RESOLVED = /^Resolved docker:/;

let work: string;
let registry: RegistryService;
let relay: CountingProxy;
let fake: FakeMachineOs;

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'ici-pvm-kill-'));
  registry = await startRegistry();
  fake = buildMachineOsLayout(join(work, 'layout'), { diskBytes: DISK_BYTES, disks: [['x86_64', 'qemu']] });
  await publishMachineOs(fake, registry.host, REPO, '5.3');
  // About a second per download: long enough for many kill points inside it, short enough for a sweep.
  relay = await startProxy({
    target: registry.host,
    fault: ({ kind }) =>
      kind === 'blob-get' ? { throttleBytesPerSecond: fake.disk('x86_64', 'qemu').blobSize } : undefined,
  });
});
afterAll(async () => {
  await relay?.stop();
  await registry?.stop();
  rmSync(work, { recursive: true, force: true });
});

/** One job's RUNNER_TEMP, HOME and workspace; `name` keeps them apart between kill points. */
function jobDirs(name: string) {
  const root = join(work, name);
  const dirs = { runnerTemp: join(root, 'temp'), home: join(root, 'home'), workspace: join(root, 'ws') };
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
  return dirs;
}

function splitJob(dirs: ReturnType<typeof jobDirs>, kill: ReturnType<typeof killMainOptions>) {
  return startSplitJob({
    action: ACTION,
    // set-default on: a kill after the download may come while the containers.conf is written and exported.
    inputs: { image: `docker://${relay.host}/${REPO}:5.3`, cache: 'false' },
    ...dirs,
    mainScript: kill.mainScript,
    env: { XDG_DATA_HOME: undefined, XDG_CONFIG_HOME: undefined, ...kill.env },
    keepInRunnerTemp: 'unchecked',
  });
}

/**
 * What a killed main and its post may leave: in RUNNER_TEMP only the stable dir, holding nothing or the complete
 * image (with or without its record) and a containers.conf naming it; in podman's image cache nothing or the
 * complete disk; in the env main exported, no containers.conf that is missing or names an incomplete image.
 * Anything else is named.
 */
async function problemsIn(
  dirs: ReturnType<typeof jobDirs>,
  exported: Record<string, string> = {},
): Promise<string[]> {
  const disk = readFileSync(fake.disk('x86_64', 'qemu').blobPath);
  const problems: string[] = [];
  for (const entry of await leftovers(dirs.runnerTemp)) {
    if (entry !== `file ${join(dirs.runnerTemp, 'ici-pvm')}`) problems.push(entry);
  }
  const stable = join(dirs.runnerTemp, 'ici-pvm');
  const image = join(stable, 'machine-os-qemu-x86_64.qcow2.zst');
  const complete = async (path: string) => (await readFile(path).catch(() => undefined))?.equals(disk);
  const conf = join(stable, 'containers.conf');
  for (const name of await readdir(stable).catch(() => [] as string[])) {
    const path = join(stable, name);
    if (name === 'machine-os-qemu-x86_64.qcow2.zst.json') continue;
    if (path === conf) continue;
    if (path !== image) problems.push(`file ${path}`);
    else if (!(await complete(path))) problems.push(`incomplete image ${path}`);
  }
  const confs = [conf, ...['CONTAINERS_CONF', 'CONTAINERS_CONF_OVERRIDE'].flatMap((v) => exported[v] ?? [])];
  for (const path of new Set(confs)) {
    const text = await readFile(path, 'utf8').catch(() => undefined);
    if (text === undefined) {
      if (path !== conf) problems.push(`exported ${path} is missing`);
    } else if (!text.includes(`image = "${image}"`) || !(await complete(image))) {
      problems.push(`${path} does not name the complete image`);
    }
  }
  const cache = join(dirs.home, '.local/share/containers/podman/machine/qemu/cache');
  for (const name of await readdir(cache).catch(() => [] as string[])) {
    if (name.endsWith('.part')) problems.push(`temporary ${join(cache, name)}`);
    else if (!(await readFile(join(cache, name))).equals(disk))
      problems.push(`incomplete ${join(cache, name)}`);
  }
  return problems;
}

it('main SIGKILLed at 20 moments around its download, each followed by post: no partial file anywhere, and a later run works', async () => {
  const calibration = jobDirs('calibration');
  const report = join(work, 'timing.json');
  const whole = await splitJob(calibration, killMainOptions(ACTION, RESOLVED, undefined, report));
  expect(whole.main.main.exitCode).toBe(0);
  expect((await whole.post()).exitCode).toBe(0);
  expect(await problemsIn(calibration)).toEqual([]);
  const timing = JSON.parse(await readFile(report, 'utf8')) as { lineMs: number; endMs: number };

  const problems: string[] = [];
  let killedInDownload = 0;
  // 6 points before the download starts, 14 spread over the download and what follows it (the old code left a
  // partial file at about 3 in 5 of those).
  const points = [
    ...Array.from({ length: 6 }, (_, i) => ({
      afterLine: false,
      delayMs: Math.round((timing.lineMs * (i + 1)) / 6),
    })),
    ...Array.from({ length: 14 }, (_, i) => ({
      afterLine: true,
      delayMs: Math.round(((timing.endMs - timing.lineMs) * i) / 14),
    })),
  ];
  // Two jobs at a time, each on paths of its own: most of a point is the throttled download's idle time, and a
  // kill delay counts from that job's own start or line.
  await mapLimit(points, 2, async (point, i) => {
    const dirs = jobDirs(`kill-${i}`);
    const job = await splitJob(dirs, killMainOptions(ACTION, RESOLVED, point));
    const post = await job.post();
    const where = `killed ${point.delayMs} ms after ${point.afterLine ? 'the resolved line' : 'start'} (main exit ${job.main.main.exitCode})`;
    if (post.exitCode !== 0) problems.push(`${where}: post exited ${post.exitCode}`);
    for (const p of await problemsIn(dirs, job.main.exportedEnv)) problems.push(`${where}: ${p}`);
    if (job.main.main.exitCode === 137 && job.main.log.includes('Resolved docker:')) killedInDownload++;
  });
  expect(problems).toEqual([]);
  // The sweep reached the download (else it proved nothing about it).
  expect(killedInDownload).toBeGreaterThan(5);

  // A later job on the last killed job's paths (as a runner reuses them) downloads and keeps a whole image.
  const last = jobDirs(`kill-${points.length - 1}`);
  const again = await splitJob(last, killMainOptions(ACTION, RESOLVED, undefined));
  expect(again.main.main.exitCode).toBe(0);
  expect((await again.post()).exitCode).toBe(0);
  expect(await problemsIn(last, again.main.exportedEnv)).toEqual([]);
  expect(again.main.exportedEnv).toHaveProperty(['CONTAINERS_CONF']);
  expect(
    readFileSync(again.main.outputs['image-path']!).equals(
      readFileSync(fake.disk('x86_64', 'qemu').blobPath),
    ),
  ).toBe(true);
  expect(await processesMentioning(last.runnerTemp)).toEqual([]);
  await rm(report, { force: true });
}, 900_000);

// Before: a main killed between creating a temp file and its rename left it: `.containers.conf.<hex>.tmp` in the
// stable dir (post did not remove it), or `.<disk>.<hex>.part` in podman's image cache, in HOME, holding a whole disk.
it("main SIGKILLed right after each change to the stable dir, podman's image cache and GITHUB_ENV, then post: nothing partial is left", async () => {
  const preload = `--import ${join(REPO_ROOT, '__tests__/support/crash-after-change.mjs')}`;
  const job = (dirs: ReturnType<typeof jobDirs>, crash: Record<string, string>) =>
    startSplitJob({
      action: ACTION,
      inputs: { image: `docker://${registry.host}/${REPO}:5.3`, cache: 'false' },
      ...dirs,
      env: {
        XDG_DATA_HOME: undefined,
        XDG_CONFIG_HOME: undefined,
        NODE_OPTIONS: preload,
        // Not the download's writes (their number depends on how the bytes arrive): what comes after it.
        IMAGE_CI_TEST_CRASH_PATHS: '/ici-pvm/|/machine/qemu/cache|/env$',
        ...crash,
      },
      keepInRunnerTemp: 'unchecked',
    });
  const countFile = join(work, 'changes.count');
  const whole = await job(jobDirs('changes'), {
    IMAGE_CI_TEST_CRASH_AFTER: '0',
    IMAGE_CI_TEST_CHANGES_FILE: countFile,
  });
  expect(whole.main.main.exitCode).toBe(0);
  const total = Number(readFileSync(countFile, 'utf8'));
  const problems: string[] = [];
  let exported = 0;
  const events = Array.from({ length: total }, (_, i) => i + 1);
  // Two at a time, each job on paths of its own (the kill comes from inside main, at that very change).
  await mapLimit(events, 2, async (event) => {
    const dirs = jobDirs(`change-${event}`);
    const killed = await job(dirs, { IMAGE_CI_TEST_CRASH_AFTER: String(event) });
    const where = `killed after change ${event} of ${total} (main exit ${killed.main.main.exitCode})`;
    // Post only where main left something to clean up (it runs about a second per point otherwise).
    if ((await problemsIn(dirs, killed.main.exportedEnv)).length > 0) {
      const post = await killed.post({ IMAGE_CI_TEST_CRASH_AFTER: '0' });
      if (post.exitCode !== 0) problems.push(`${where}: post exited ${post.exitCode}`);
      for (const p of await problemsIn(dirs, killed.main.exportedEnv)) problems.push(`${where}: ${p}`);
    }
    if (killed.main.exportedEnv.CONTAINERS_CONF) exported++;
  });
  expect(problems).toEqual([]);
  // The sweep reached the export (and, being after the stable dir's changes, everything before it).
  expect(exported).toBeGreaterThan(0);
}, 120_000);

it("main SIGKILLed halfway through a URL download, then post: nothing left in RUNNER_TEMP or podman's image cache", async () => {
  // Half the announced body, then silence: main is inside the download whenever it is killed.
  const held: ServerResponse[] = [];
  const server = createServer((_req, res) => {
    held.push(res);
    res.writeHead(200, { 'content-length': 1024 * 1024 }).write(Buffer.alloc(512 * 1024, 7));
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  try {
    const dirs = jobDirs('kill-url');
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/disk.qcow2.xz`;
    const kill = killMainOptions(ACTION, /image http:/, { afterLine: true, delayMs: 1500 });
    const job = await startSplitJob({
      action: ACTION,
      inputs: { image: url, cache: 'false', 'set-default': 'false' },
      ...dirs,
      mainScript: kill.mainScript,
      env: { XDG_DATA_HOME: undefined, XDG_CONFIG_HOME: undefined, ...kill.env },
      keepInRunnerTemp: 'unchecked',
    });
    expect(job.main.main.exitCode).toBe(137);
    expect(held).toHaveLength(1);
    // The kill left a partial file (in main's scratch dir): what post has to remove.
    const partial = (await readdir(dirs.runnerTemp, { recursive: true })).filter((p) =>
      p.endsWith('.qcow2.xz'),
    );
    expect(partial.length).toBeGreaterThan(0);
    expect((await job.post()).exitCode).toBe(0);
    const stable = join(dirs.runnerTemp, 'ici-pvm');
    expect(await leftovers(dirs.runnerTemp)).toEqual(
      (await readdir(dirs.runnerTemp)).includes('ici-pvm') ? [`file ${stable}`] : [],
    );
    expect(await readdir(stable).catch(() => [])).toEqual([]);
    const cache = join(dirs.home, '.local/share/containers/podman/machine/qemu/cache');
    expect(await readdir(cache).catch(() => [])).toEqual([]);
  } finally {
    for (const res of held) res.destroy();
    server.closeAllConnections();
    await new Promise((done) => server.close(done));
  }
}, 120_000);
