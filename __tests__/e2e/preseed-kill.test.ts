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
import { killMainOptions, leftovers, processesMentioning } from '../support/leftovers.js';
import { buildMachineOsLayout, publishMachineOs, type FakeMachineOs } from '../support/machine-os.js';
import { startProxy, type CountingProxy } from '../support/proxy.js';
import { startRegistry, type RegistryService } from '../support/registry.js';
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
    inputs: { image: `docker://${relay.host}/${REPO}:5.3`, cache: 'false', 'set-default': 'false' },
    ...dirs,
    mainScript: kill.mainScript,
    env: { XDG_DATA_HOME: undefined, XDG_CONFIG_HOME: undefined, ...kill.env },
    keepInRunnerTemp: 'unchecked',
  });
}

/**
 * What a killed main and its post may leave: in RUNNER_TEMP only the stable dir, holding nothing or the complete
 * image (with or without its record); in podman's image cache nothing or the complete disk. Anything else is
 * named.
 */
async function problemsIn(dirs: ReturnType<typeof jobDirs>): Promise<string[]> {
  const disk = readFileSync(fake.disk('x86_64', 'qemu').blobPath);
  const problems: string[] = [];
  for (const entry of await leftovers(dirs.runnerTemp)) {
    if (entry !== `file ${join(dirs.runnerTemp, 'ici-pvm')}`) problems.push(entry);
  }
  const stable = join(dirs.runnerTemp, 'ici-pvm');
  for (const name of await readdir(stable).catch(() => [] as string[])) {
    const path = join(stable, name);
    if (name === 'machine-os-qemu-x86_64.qcow2.zst.json') continue;
    if (name !== 'machine-os-qemu-x86_64.qcow2.zst') problems.push(`file ${path}`);
    else if (!(await readFile(path)).equals(disk)) problems.push(`incomplete image ${path}`);
  }
  const cache = join(dirs.home, '.local/share/containers/podman/machine/qemu/cache');
  for (const name of await readdir(cache).catch(() => [] as string[])) {
    if (!(await readFile(join(cache, name))).equals(disk)) problems.push(`incomplete ${join(cache, name)}`);
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
  let last: ReturnType<typeof jobDirs> | undefined;
  for (const [i, point] of points.entries()) {
    const dirs = jobDirs(`kill-${i}`);
    const job = await splitJob(dirs, killMainOptions(ACTION, RESOLVED, point));
    const post = await job.post();
    const where = `killed ${point.delayMs} ms after ${point.afterLine ? 'the resolved line' : 'start'} (main exit ${job.main.main.exitCode})`;
    if (post.exitCode !== 0) problems.push(`${where}: post exited ${post.exitCode}`);
    for (const p of await problemsIn(dirs)) problems.push(`${where}: ${p}`);
    if (job.main.main.exitCode === 137 && job.main.log.includes('Resolved docker:')) killedInDownload++;
    last = dirs;
  }
  expect(problems).toEqual([]);
  // The sweep reached the download (else it proved nothing about it).
  expect(killedInDownload).toBeGreaterThan(5);

  // A later job on the last killed job's paths (as a runner reuses them) downloads and keeps a whole image.
  const again = await splitJob(last!, killMainOptions(ACTION, RESOLVED, undefined));
  expect(again.main.main.exitCode).toBe(0);
  expect((await again.post()).exitCode).toBe(0);
  expect(await problemsIn(last!)).toEqual([]);
  expect(
    readFileSync(again.main.outputs['image-path']!).equals(
      readFileSync(fake.disk('x86_64', 'qemu').blobPath),
    ),
  ).toBe(true);
  expect(await processesMentioning(last!.runnerTemp)).toEqual([]);
  await rm(report, { force: true });
}, 900_000);

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
