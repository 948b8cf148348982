// Benchmark: a build whose `RUN --mount=type=cache` step downloads ~50 MiB of "packages" from a local mirror,
// cold (nothing cached) vs after remote-build-env restored the cache mounts from the Actions cache (the local
// cache service speaking the real protocol to the unmodified @actions/cache). Each run is a fresh job: a new
// service with its own image store (isolate-storage, so no layer cache helps), the same RUNNER_TEMP path wiped
// (as a later workflow run sees it). The action runs through its CLI (`image-ci remote-build-env`), which keeps
// the service up until SIGINT and then runs post (which saves the cache).
//
// The mirror is a local HTTP server throttled to --mirror-mibps with --latency-ms per file, because there is no
// network here; the cold/warm ratio depends on those numbers, so they are printed with the result.
//
// usage: npm run build && node bench/remote-build-env.mjs [--mib 50] [--files 50] [--mirror-mibps 25] [--latency-ms 20]
// Test-only podman settings (runc, no default ulimits) come from __tests__/support/podman.ts, compiled on the fly.
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname ?? new URL('..', import.meta.url).pathname, '..');
const args = process.argv.slice(2);
const arg = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const MIB = arg('mib', 50);
const FILES = arg('files', 50);
const MIRROR_MIBPS = arg('mirror-mibps', 25);
const LATENCY_MS = arg('latency-ms', 20);
const CLI = join(ROOT, 'dist', 'cli.js');

/** Compiles the test support modules the bench shares with the tests (plain tsc, into node_modules/.cache). */
async function loadSupport() {
  const out = join(ROOT, 'node_modules', '.cache', 'ici-bench');
  rmSync(out, { recursive: true, force: true });
  const files = ['podman.ts', 'images.ts', 'cache-service.ts'].map((f) =>
    join(ROOT, '__tests__', 'support', f),
  );
  const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  const flags = [
    '--outDir',
    out,
    '--rootDir',
    ROOT,
    '--module',
    'NodeNext',
    '--moduleResolution',
    'NodeNext',
  ];
  execFileSync(
    process.execPath,
    [tsc, ...flags, '--target', 'ES2022', '--types', 'node', '--skipLibCheck', '--ignoreConfig', ...files],
    {
      stdio: 'inherit',
    },
  );
  writeFileSync(join(out, 'package.json'), '{ "type": "module" }\n');
  const load = (f) => import(join(out, '__tests__', 'support', f));
  return {
    podman: await load('podman.js'),
    images: await load('images.js'),
    cache: await load('cache-service.js'),
  };
}

/** A package mirror: FILES files of MIB/FILES MiB random data, LATENCY_MS before each, MIRROR_MIBPS in total. */
async function startMirror() {
  const size = Math.round((MIB * 1024 * 1024) / FILES);
  // Every file different (one random buffer sliced): identical files would let zstd shrink the cache entry.
  const all = randomBytes(size * FILES);
  const chunk = 64 * 1024;
  const chunkMs = (chunk / (MIRROR_MIBPS * 1024 * 1024)) * 1000;
  const server = createServer(async (req, res) => {
    const n = Number(/pkg-(\d+)$/.exec(req.url ?? '')?.[1] ?? 1);
    const body = all.subarray(((n - 1) % FILES) * size, (((n - 1) % FILES) + 1) * size);
    await new Promise((r) => setTimeout(r, LATENCY_MS));
    res.writeHead(200, { 'content-length': size });
    for (let off = 0; off < size; off += chunk) {
      if (!res.write(body.subarray(off, off + chunk))) await new Promise((r) => res.once('drain', r));
      await new Promise((r) => setTimeout(r, chunkMs));
    }
    res.end();
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: server.address().port };
}

function containerfile(image, port) {
  // The "package manager": downloads only what the cache mount lacks, then uses it (cat = "install").
  return [
    `FROM ${image}`,
    'RUN --mount=type=cache,target=/var/cache/pkgs,sharing=locked \\',
    `    for i in $(seq 1 ${FILES}); do \\`,
    `      [ -f /var/cache/pkgs/pkg-$i ] || wget -q -O /var/cache/pkgs/pkg-$i http://127.0.0.1:${port}/pkg-$i; \\`,
    '    done && cat /var/cache/pkgs/pkg-* | wc -c > /installed-bytes',
    '',
  ].join('\n');
}

/** Starts the action through its CLI; resolves once the service answers, with a stop() that runs post. */
function startAction(env) {
  const started = Date.now();
  const child = spawn(
    process.execPath,
    [CLI, 'remote-build-env', '--cache-mounts', '--cache-key', 'bench-mounts', '--isolate-storage'],
    { env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  const exited = new Promise((r) => child.on('close', r));
  return new Promise((resolveReady, reject) => {
    const check = () => {
      const url = /^container-host=(.+)$/m.exec(out)?.[1];
      const hit = /^cache-hit=(.+)$/m.exec(out)?.[1];
      if (url && err.includes('Press Ctrl-C')) {
        resolveReady({
          url,
          hit,
          readyMs: Date.now() - started,
          async stop() {
            const t = Date.now();
            child.kill('SIGINT');
            const code = await exited;
            if (code !== 0) throw new Error(`post exited ${code}:\n${err}`);
            return { postMs: Date.now() - t, log: err };
          },
        });
      }
    };
    child.stdout.on('data', (c) => ((out += c), check()));
    child.stderr.on('data', (c) => ((err += c), check()));
    exited.then((code) => reject(new Error(`CLI exited ${code} before ready:\n${out}\n${err}`)));
  });
}

async function job(label, support, pm, ctx, env) {
  const action = await startAction(env);
  await support.images.importBusyboxImage(pm, { url: action.url });
  const t = Date.now();
  // Asynchronously: the mirror is served by this very process.
  await new Promise((resolveBuild, reject) => {
    const build = spawn(
      'podman',
      ['--url', action.url, 'build', '-q', '--network', 'host', '-t', `localhost/bench-${label}`, ctx],
      { env: { ...process.env, ...pm.env }, stdio: ['ignore', 'ignore', 'inherit'] },
    );
    const timer = setTimeout(() => build.kill('SIGKILL'), 600_000);
    build.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolveBuild();
      else reject(new Error(`podman build exited ${code}`));
    });
  });
  const buildMs = Date.now() - t;
  const { postMs, log } = await action.stop();
  return { label, hit: action.hit, readyMs: action.readyMs, buildMs, postMs, log };
}

const s = (ms) => `${(ms / 1000).toFixed(2)} s`;

const support = await loadSupport();
const pm = await support.podman.createPodmanTestEnv();
const cacheService = await support.cache.CacheService.start();
const mirror = await startMirror();
const runnerTemp = mkdtempSync('/tmp/ici-bench-rt-');
const aside = [];
try {
  const image = await support.images.importBusyboxImage(pm);
  const ctx = join(pm.dir, 'ctx');
  mkdirSync(ctx);
  writeFileSync(join(ctx, 'Containerfile'), containerfile(image, mirror.port));
  const env = { ...process.env, ...pm.env, ...cacheService.env(), RUNNER_TEMP: runnerTemp, NODE_OPTIONS: '' };

  const cold = await job('cold', support, pm, ctx, env);
  aside.push(...(await support.cache.laterRun([runnerTemp])));
  const warm = await job('warm', support, pm, ctx, env);
  const entry = cacheService.list().find((e) => e.finalized);

  console.log(
    `\nremote-build-env bench: ${MIB} MiB in ${FILES} files, mirror ${MIRROR_MIBPS} MiB/s + ${LATENCY_MS} ms/file`,
  );
  console.log(
    `cache entry: ${entry ? `${entry.key}, ${(entry.sizeBytes / 1048576).toFixed(1)} MiB` : 'none'}`,
  );
  for (const r of [cold, warm]) {
    console.log(
      `${r.label.padEnd(5)} cache-hit=${r.hit}  start (incl. restore) ${s(r.readyMs)}  build ${s(r.buildMs)}  ` +
        `post (incl. save) ${s(r.postMs)}`,
    );
  }
  console.log(
    `build:           cold ${s(cold.buildMs)} vs warm ${s(warm.buildMs)}  ratio ${(cold.buildMs / warm.buildMs).toFixed(2)}x`,
  );
  const coldTotal = cold.readyMs + cold.buildMs;
  const warmTotal = warm.readyMs + warm.buildMs;
  console.log(
    `start + build:   cold ${s(coldTotal)} vs warm ${s(warmTotal)}  ratio ${(coldTotal / warmTotal).toFixed(2)}x`,
  );
  if (warm.hit !== 'true') throw new Error(`the warm run did not restore the cache:\n${warm.log}`);
} finally {
  mirror.server.close();
  await cacheService.stop();
  await pm.remove();
  for (const d of [runnerTemp, ...aside]) rmSync(d, { recursive: true, force: true });
}
