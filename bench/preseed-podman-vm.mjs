// Benchmark for preseed-podman-vm's warm start: a 1 GiB (incompressible) cached machine disk restored by the
// action, against the alternatives measured in the same run on the same bytes:
//   1. loopback cache service: warm main (streaming restore + verify) vs `tar -xf` of the very same archive,
//      vs @actions/cache's own restoreCache, and vs the cold main (registry download + verify);
//   2. the cache service limited to 100 MB/s (the hosted cache's order of speed): warm main vs the time the
//      archive's bytes need at that speed;
//   3. directory backend: restoring the disk from a cache volume on the same filesystem vs `tar -xf` of it.
// Usage: npm run build && node bench/preseed-podman-vm.mjs [--size-mib 1024] [--repeat 3]
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);
const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const sizeMiB = arg('size-mib', 1024);
const repeat = arg('repeat', 3);
const THROTTLE = 100e6; // bytes per second
const seconds = (ms) => `${(ms / 1000).toFixed(2)} s`;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const runs = (xs) => `runs: ${xs.map(seconds).join(', ')}`;
const load = () =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');

// The test support modules (cache service, registry, fake machine-os, runner harness) are TypeScript; compile
// them next to node_modules so their imports resolve.
const out = join(root, 'node_modules', '.cache', 'ici-bench-pvm');
rmSync(out, { recursive: true, force: true });
execFileSync(
  process.execPath,
  [
    join(root, 'node_modules/typescript/bin/tsc'),
    '--ignoreConfig',
    ...['--outDir', out, '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022'],
    ...['--lib', 'es2023', '--types', 'node', '--skipLibCheck', '--rootDir', root],
    ...['cache-service', 'registry', 'machine-os', 'harness'].map((m) =>
      join(root, '__tests__/support', `${m}.ts`),
    ),
  ],
  { stdio: 'inherit' },
);
const { CacheService, laterRun } = await import(join(out, '__tests__/support/cache-service.js'));
const { startRegistry } = await import(join(out, '__tests__/support/registry.js'));
const { buildMachineOsLayout, publishMachineOs } = await import(join(out, '__tests__/support/machine-os.js'));
const { runAction } = await import(join(out, '__tests__/support/harness.js'));
// The compiled product (npm run build puts tsc's output in lib/): the directory backend in-process.
const { restoreCache } = await import(join(root, 'lib/core/cache.js'));
const { CliHost } = await import(join(root, 'lib/core/host.js'));
const { MapInputSource } = await import(join(root, 'lib/core/inputs.js'));

const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString());
/** CPU time the whole machine spent so far (every process, user + system), in ms, from /proc/stat. */
const machineCpuMs = () => {
  const [user, nice, system, , , irq, softirq, steal] = readFileSync('/proc/stat', 'utf8')
    .split('\n')[0]
    .trim()
    .split(/\s+/)
    .slice(1)
    .map(Number);
  return ((user + nice + system + irq + softirq + steal) * 1000) / CLK_TCK;
};
/** This process's CPU time (here: the cache service and the harness), in ms. */
const ownCpuMs = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};
/** Wall time of `fn`, and the CPU time the machine and this process spent meanwhile. */
const measured = async (fn) => {
  const [machine0, own0, t0] = [machineCpuMs(), ownCpuMs(), performance.now()];
  const result = await fn();
  return {
    result,
    wallMs: performance.now() - t0,
    cpuMs: machineCpuMs() - machine0,
    ownCpuMs: ownCpuMs() - own0,
  };
};

/**
 * Writes the previous run's dirty pages out before the next measurement, so no case pays for another's
 * writeback (it made single tar -xf runs vary between 1.7 and 3.5 s).
 */
const settle = () => execFileSync('sync');

const loadBefore = load();
const work = mkdtempSync(join(tmpdir(), 'ici-bench-pvm-'));
const registry = await startRegistry();
const service = await CacheService.start();
try {
  const arch = process.arch === 'arm64' ? 'aarch64' : 'x86_64';
  console.log(`Building a fake machine-os index with a ${sizeMiB} MiB random ${arch} qemu disk ...`);
  const fake = buildMachineOsLayout(join(work, 'layout'), {
    diskBytes: sizeMiB * 1024 * 1024,
    disks: [[arch, 'qemu']],
  });
  await publishMachineOs(fake, registry.host, 'podman/machine-os', '5.3');
  const disk = fake.disk(arch, 'qemu');

  const dirs = { runnerTemp: join(work, 'temp'), home: join(work, 'home'), workspace: join(work, 'ws') };
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
  const action = (skipPost, env, inputs = {}) =>
    runAction({
      mainScript: join(root, 'dist/preseed-podman-vm/main.js'),
      postScript: join(root, 'dist/preseed-podman-vm/post.js'),
      actionYml: join(root, 'actions/preseed-podman-vm/action.yml'),
      inputs: { image: `docker://${registry.host}/podman/machine-os:5.3`, ...inputs },
      env,
      ...dirs,
      skipPost,
      timeoutMs: 1_800_000,
      // The action's cache path stays in RUNNER_TEMP for the next run (the harness checks the rest after post).
      keepInRunnerTemp: ['ici-pvm'],
    });
  const sweep = () => {
    for (const d of readdirSync(work).filter((n) => n.includes('.earlier-')))
      rmSync(join(work, d), { recursive: true });
  };
  /**
   * Every case starts alike: a later run's empty dirs, the earlier runs' files deleted (not only moved aside)
   * and their pages written out. On this VM, writing a GiB into memory the guest has not used lately costs up to
   * 3 s more than writing it where just-deleted files were (`cat` of 1 GiB into new files: 0.35, 1.1, 3.4,
   * 3.5 s while the earlier files were kept; 0.24-0.29 s each after deleting them). Moved aside and kept, the
   * earlier runs' files made whichever case came later in an iteration up to twice as slow.
   */
  const fresh = async () => {
    await laterRun([dirs.runnerTemp, dirs.home]);
    sweep();
    settle();
  };
  // The streaming part of each warm run, as the action logs it (`streamed into tar in 9.8 s`).
  const streamed = [];
  /** The warm run's main (wall ms), and the CPU time the machine and the cache service spent meanwhile. */
  const warmRun = async (env) => {
    await fresh();
    const { result: warm, cpuMs, ownCpuMs: serviceCpuMs } = await measured(() => action(true, env));
    if (warm.outputs['cache-hit'] !== 'true') throw new Error(`warm run missed the cache:\n${warm.log}`);
    if (/Streaming restore not used/.test(warm.log)) throw new Error(`the stream fell back:\n${warm.log}`);
    const stream = /streamed into tar in ([\d.]+) (ms|s)/.exec(warm.log);
    if (stream) streamed.push(Number(stream[1]) * (stream[2] === 's' ? 1000 : 1));
    return { wallMs: warm.main.durationMs, cpuMs, serviceCpuMs };
  };

  /** A cold main: a cache miss (a key prefix never saved), the registry download and the verify. */
  const coldMain = [];
  const coldRun = async (skipPost, prefix) => {
    await fresh();
    const run = await action(skipPost, service.env(dirs), prefix ? { 'cache-key-prefix': prefix } : {});
    if (run.main.exitCode !== 0 || run.outputs['cache-hit'] !== 'false')
      throw new Error(`cold run failed:\n${run.log}`);
    coldMain.push(run.main.durationMs);
    return run;
  };

  // 1. Actions cache on loopback. The first cold run saves the entry the warm runs restore.
  const cold = await coldRun(false);
  const plan = JSON.parse(cold.main.state['ici-cache-plan']);
  const archive = largestFile(service.root);
  const archiveBytes = statSync(archive).size;
  const warmMain = [];
  const libraryRestores = [];
  const tars = [];
  // The same with the 1 MiB records the stream gives GNU tar: the stream's own tar, without the stream.
  const tarsBigRecords = [];
  // The same tar fed by one plain `curl` of the archive URL the service hands out: the floor the standard tools
  // reach from this loopback service on this machine (one connection, no verify).
  const curlTars = [];
  const curlTarCpu = [];
  // CPU time of every process on the machine during each warm run and each tar -xf: on a small VM the cache
  // service, the action, zstd and tar share the CPUs, which bounds the warm run from below.
  const warmCpu = [];
  const serviceCpu = [];
  const tarCpu = [];
  for (let i = 0; i < repeat; i++) {
    const warm = await warmRun(service.env(dirs));
    warmMain.push(warm.wallMs);
    warmCpu.push(warm.cpuMs);
    serviceCpu.push(warm.serviceCpuMs);
    await fresh();
    libraryRestores.push(await timedLibraryRestore(plan.paths, plan.key, dirs));
    const tarCases = [
      async () => {
        const tarRun = await measured(() => timedTar(archive, dirs.workspace, plan.paths[0], disk.blobSize));
        tars.push(tarRun.result);
        tarCpu.push(tarRun.cpuMs);
      },
      async () =>
        tarsBigRecords.push(
          timedTar(archive, dirs.workspace, plan.paths[0], disk.blobSize, ['--blocking-factor=2048']),
        ),
      async () => {
        const curlRun = await measured(() =>
          timedCurlTar(service.archiveUrl(plan.key), dirs.workspace, plan.paths[0], disk.blobSize),
        );
        curlTars.push(curlRun.result);
        curlTarCpu.push(curlRun.cpuMs);
      },
    ];
    for (const tarCase of i % 2 === 0 ? tarCases : tarCases.reverse()) {
      await fresh();
      await tarCase();
    }
    if (i > 0) await coldRun(true, `cold-${i}`);
  }

  const streamedFast = streamed.splice(0);

  // 2. The same, with the service limited to 100 MB/s.
  service.limitDownloads(THROTTLE);
  const throttled = [];
  for (let i = 0; i < repeat; i++) {
    throttled.push((await warmRun(service.env(dirs))).wallMs);
  }
  service.limitDownloads(undefined);
  const streamedThrottled = streamed.splice(0);
  const bytesAtThrottle = (archiveBytes / THROTTLE) * 1000;

  // 3. Directory backend: a cold run saves into the volume (the disk as it is); restores hard-link it.
  const volume = join(work, 'volume');
  const dirEnv = { IMAGE_CI_CACHE_DIR: volume };
  await laterRun([dirs.runnerTemp, dirs.home]);
  const dirCold = await action(false, dirEnv);
  if (dirCold.post?.exitCode !== 0 || !/Cache saved/.test(dirCold.log))
    throw new Error(`dir save failed:\n${dirCold.log}`);
  const dirArchive = join(work, 'disk.tar.zst');
  execFileSync('tar', [
    '-c',
    '-P',
    '--posix',
    '-f',
    dirArchive,
    '--use-compress-program',
    'zstdmt',
    ...plan.paths,
  ]);
  const dirRestores = [];
  const dirTars = [];
  const dirWarmMain = [];
  process.env.IMAGE_CI_CACHE_DIR = volume;
  for (const k of ['ACTIONS_CACHE_SERVICE_V2', 'ACTIONS_RESULTS_URL', 'ACTIONS_CACHE_URL'])
    delete process.env[k];
  for (let i = 0; i < repeat; i++) {
    await fresh();
    const host = new CliHost({ inputs: new MapInputSource({}), log: () => undefined, out: () => undefined });
    const t0 = performance.now();
    const r = await restoreCache(host, plan.paths, plan.key, [], { readOnly: true, fileDigests: true });
    dirRestores.push(performance.now() - t0);
    if (!r.hit || statSync(plan.paths[0]).size !== disk.blobSize) throw new Error('dir restore missed');
    await fresh();
    dirTars.push(timedTar(dirArchive, '/', plan.paths[0], disk.blobSize));
    dirWarmMain.push((await warmRun(dirEnv)).wallMs);
  }

  const warm = median(warmMain);
  const tar = median(tars);
  console.log(`\npreseed-podman-vm benchmark: ${sizeMiB} MiB incompressible disk, median of ${repeat}`);
  console.log(
    `load average (1/5/15 min) before: ${loadBefore}, after: ${load()}; ${execFileSync('nproc').toString().trim()} CPUs`,
  );
  console.log(`cache archive                              ${(archiveBytes / 2 ** 20).toFixed(0)} MiB`);
  console.log('\n1. Actions cache service on loopback');
  console.log(`cold main (registry download+verify)       ${seconds(median(coldMain))}   ${runs(coldMain)}`);
  console.log(`cold post (cache save, @actions/cache)     ${seconds(cold.post.durationMs)}`);
  console.log(`warm main (streamed restore+verify)        ${seconds(warm)}   ${runs(warmMain)}`);
  console.log(
    `  of which streaming into tar              ${seconds(median(streamedFast))}   ${runs(streamedFast)}`,
  );
  console.log(
    `@actions/cache restoreCache alone          ${seconds(median(libraryRestores))}   ${runs(libraryRestores)}`,
  );
  console.log(`tar -xf of the same archive                ${seconds(tar)}   ${runs(tars)}`);
  console.log(
    `tar -xf with 1 MiB records (as the stream)  ${seconds(median(tarsBigRecords))}   ${runs(tarsBigRecords)}`,
  );
  console.log(`curl | tar -x from the same service        ${seconds(median(curlTars))}   ${runs(curlTars)}`);
  console.log(`ratio warm main / tar -xf                  ${(warm / tar).toFixed(2)}x  (goal <= 1.3x)`);
  console.log(
    `ratio curl | tar -x / tar -xf              ${(median(curlTars) / tar).toFixed(2)}x  (the standard tools' floor here, no verify)`,
  );
  console.log(`ratio warm main / curl | tar -x            ${(warm / median(curlTars)).toFixed(2)}x`);
  const cpus = Number(execFileSync('nproc').toString());
  console.log(
    `CPU time, all processes: tar -xf           ${seconds(median(tarCpu))}   ${runs(tarCpu)}\n` +
      `                         curl | tar -x      ${seconds(median(curlTarCpu))}   ${runs(curlTarCpu)}\n` +
      `                         warm run           ${seconds(median(warmCpu))}   ${runs(warmCpu)}\n` +
      `  of which this process (cache service)    ${seconds(median(serviceCpu))}   ${runs(serviceCpu)}\n` +
      `  the warm run's CPU time / ${cpus} CPUs        ${seconds(median(warmCpu) / cpus)}   (no faster on this machine; 1.3x tar -xf = ${seconds(1.3 * tar)})`,
  );
  console.log(
    `ratio warm main / cold main                ${(warm / median(coldMain)).toFixed(2)}x  (goal <= 1x)`,
  );
  console.log(
    `ratio @actions/cache restore / tar -xf     ${(median(libraryRestores) / tar).toFixed(2)}x  (before streaming)`,
  );
  console.log(`\n2. Cache service limited to ${THROTTLE / 1e6} MB/s`);
  console.log(`archive bytes at that speed                ${seconds(bytesAtThrottle)}`);
  console.log(
    `warm main                                  ${seconds(median(throttled))}   ${runs(throttled)}`,
  );
  console.log(
    `  of which streaming into tar              ${seconds(median(streamedThrottled))}   ${runs(streamedThrottled)}`,
  );
  console.log(
    `ratio warm main / bytes at ${THROTTLE / 1e6} MB/s        ${(median(throttled) / bytesAtThrottle).toFixed(2)}x  (goal <= 1.15x)`,
  );
  console.log('\n3. Directory backend, volume on the same filesystem');
  console.log(
    `restore (hard link, read-only use)         ${seconds(median(dirRestores))}   ${runs(dirRestores)}`,
  );
  console.log(`tar -xf of the disk as a zstd tar          ${seconds(median(dirTars))}   ${runs(dirTars)}`);
  console.log(
    `ratio restore / tar -xf                    ${(median(dirRestores) / median(dirTars)).toFixed(3)}x  (goal: restore <= 0.2 s)`,
  );
  console.log(
    `warm main (restore + sha256 of the disk)   ${seconds(median(dirWarmMain))}   ${runs(dirWarmMain)}`,
  );
} finally {
  await service.stop();
  await registry.stop();
  rmSync(work, { recursive: true, force: true });
  // The harness leaves its run dirs to jest's test environment (removeAfterFile); outside jest they go here.
  for (const dir of globalThis[Symbol.for('image-ci.removeAfterFile')] ?? [])
    rmSync(dir, { recursive: true, force: true });
  rmSync(out, { recursive: true, force: true });
}

function largestFile(dir) {
  let best = { size: -1, path: '' };
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath ?? entry.path, entry.name);
    const size = statSync(path).size;
    if (size > best.size) best = { size, path };
  }
  return best.path;
}

/** The command @actions/cache runs after its download. */
function timedTar(archive, cwd, expectFile, expectSize, extraArgs = []) {
  const t0 = performance.now();
  execFileSync('tar', ['-xf', archive, '-P', '-C', cwd, '--use-compress-program', 'unzstd', ...extraArgs]);
  const ms = performance.now() - t0;
  if (statSync(expectFile).size !== expectSize) throw new Error('tar did not restore the image');
  return ms;
}

/** timedTar's command reading from one plain curl of `url` (async: the cache service runs in this process). */
async function timedCurlTar(url, cwd, expectFile, expectSize) {
  const t0 = performance.now();
  await execFileAsync('bash', [
    '-c',
    'set -o pipefail; curl -sSf "$1" | tar -xf - -P -C "$2" --use-compress-program unzstd',
    'bash',
    url,
    cwd,
  ]);
  const ms = performance.now() - t0;
  if (statSync(expectFile).size !== expectSize) throw new Error('curl | tar did not restore the image');
  return ms;
}

/** Times the real @actions/cache restoreCache in a child process, as the action's main step used to call it. */
async function timedLibraryRestore(paths, key, dirs) {
  const script =
    "import * as c from '@actions/cache'; const t0 = performance.now(); const k = await c.restoreCache(JSON.parse(process.argv[1]), process.argv[2]); if (!k) process.exit(3); console.log(`ms=${performance.now() - t0}`);";
  const { stdout } = await execFileAsync(
    process.execPath,
    ['--input-type=module', '-e', script, JSON.stringify(paths), key],
    { cwd: root, env: { ...process.env, ...service.env(dirs) }, timeout: 600_000, maxBuffer: 64 * 2 ** 20 },
  );
  return Number(/ms=([\d.]+)/.exec(stdout)[1]);
}
