// Benchmark for preseed-podman-vm: restoring a 1 GiB (incompressible) cached machine image through the real
// @actions/cache from the local cache service, against a plain `tar -xf` of the very same archive; plus the
// action's cold run (registry download + save) against its warm run (cache restore + sha256 check).
// Usage: npm run build && node bench/preseed-podman-vm.mjs [--size-mib 1024] [--repeat 3]
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
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
const seconds = (ms) => `${(ms / 1000).toFixed(2)} s`;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

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
  console.log(`disk blob: ${(disk.blobSize / 2 ** 20).toFixed(0)} MiB`);

  const dirs = { runnerTemp: join(work, 'temp'), home: join(work, 'home'), workspace: join(work, 'ws') };
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
  const action = (skipPost) =>
    runAction({
      mainScript: join(root, 'dist/preseed-podman-vm/main.js'),
      postScript: join(root, 'dist/preseed-podman-vm/post.js'),
      actionYml: join(root, 'actions/preseed-podman-vm/action.yml'),
      inputs: { image: `docker://${registry.host}/podman/machine-os:5.3` },
      env: service.env(dirs),
      ...dirs,
      skipPost,
      timeoutMs: 1_800_000,
    });

  const cold = await action(false);
  if (cold.main.exitCode !== 0 || cold.outputs['cache-hit'] !== 'false')
    throw new Error(`cold run failed:\n${cold.log}`);
  const plan = JSON.parse(cold.main.state['ici-cache-plan']);

  const warmMain = [];
  const restores = [];
  const tars = [];
  const archive = largestFile(service.root);
  for (let i = 0; i < repeat; i++) {
    await laterRun([dirs.runnerTemp, dirs.home]);
    const warm = await action(true);
    if (warm.outputs['cache-hit'] !== 'true') throw new Error(`warm run missed the cache:\n${warm.log}`);
    warmMain.push(warm.main.durationMs);

    await laterRun([dirs.runnerTemp, dirs.home]);
    restores.push(await timedRestore(plan.paths, plan.key, dirs));

    await laterRun([dirs.runnerTemp, dirs.home]);
    const t0 = performance.now();
    // The same command @actions/cache runs after its download.
    execFileSync('tar', ['-xf', archive, '-P', '-C', dirs.workspace, '--use-compress-program', 'unzstd']);
    tars.push(performance.now() - t0);
    if (statSync(plan.paths[0]).size !== disk.blobSize) throw new Error('tar did not restore the image');
    for (const d of readdirSync(work).filter((n) => n.includes('.earlier-')))
      rmSync(join(work, d), { recursive: true });
  }

  const restore = median(restores);
  const tar = median(tars);
  console.log(`\npreseed-podman-vm benchmark (${sizeMiB} MiB incompressible image, median of ${repeat})`);
  console.log(`cache archive                          ${(statSync(archive).size / 2 ** 20).toFixed(0)} MiB`);
  console.log(`cold main (registry download+verify)   ${seconds(cold.main.durationMs)}`);
  console.log(`cold post (cache save)                 ${seconds(cold.post.durationMs)}`);
  console.log(`warm main (cache restore+verify)       ${seconds(median(warmMain))}`);
  console.log(
    `@actions/cache restoreCache only       ${seconds(restore)}   runs: ${restores.map(seconds).join(', ')}`,
  );
  console.log(
    `plain tar -xf of the same archive      ${seconds(tar)}   runs: ${tars.map(seconds).join(', ')}`,
  );
  console.log(`ratio restore / tar                    ${(restore / tar).toFixed(2)}x (goal <= 1.3x)`);
  console.log(`ratio warm main / tar                  ${(median(warmMain) / tar).toFixed(2)}x`);
  console.log(
    `cold main / warm main                  ${(cold.main.durationMs / median(warmMain)).toFixed(2)}x`,
  );
} finally {
  await service.stop();
  await registry.stop();
  rmSync(work, { recursive: true, force: true });
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

/** Times the real @actions/cache restoreCache in a child process, as the action's main step calls it. */
async function timedRestore(paths, key, dirs) {
  const script =
    "import * as c from '@actions/cache'; const t0 = performance.now(); const k = await c.restoreCache(JSON.parse(process.argv[1]), process.argv[2]); if (!k) process.exit(3); console.log(`ms=${performance.now() - t0}`);";
  const { stdout } = await execFileAsync(
    process.execPath,
    ['--input-type=module', '-e', script, JSON.stringify(paths), key],
    { cwd: root, env: { ...process.env, ...service.env(dirs) }, timeout: 600_000, maxBuffer: 64 * 2 ** 20 },
  );
  return Number(/ms=([\d.]+)/.exec(stdout)[1]);
}
