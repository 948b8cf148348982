// Benchmark: push one image (3 incompressible layers, ~60 MiB) under 10 tags to 2 registries through relays that
// add 50 ms each way (100 ms RTT) and count the bytes crossing them; this action vs a `skopeo copy` loop vs a
// `podman push` loop, each against fresh registries. Also one tag to one registry: the action vs one skopeo copy,
// and a promotion from a docker:// source (behind the same latency) without and with its referrers (3 signatures
// and 1 SBOM, OCI 1.1 referrers kept in the referrers tag schema, as on a registry without the referrers API).
// The action's rows show its phase 1 (blobs and manifests by digest) and phase 2 (tags) times from its log.
// Usage (after `npm run build`): node bench/push-multi-tag.mjs [--layer-mib 20] [--latency-ms 50]
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
};
const LAYER_MIB = arg('layer-mib', 20);
const LATENCY_MS = arg('latency-ms', 50);
const TAGS = Array.from({ length: 10 }, (_, i) => `t${i + 1}`);

const work = mkdtempSync(join(tmpdir(), 'ici-bench-'));
// Also when a step fails: the error is printed, and nothing of the run stays in /tmp.
process.on('exit', () => rmSync(work, { recursive: true, force: true }));
// The registry, relay and layout helpers are the test support's TypeScript; compile them once for this run.
execFileSync(
  process.execPath,
  [
    'node_modules/typescript/bin/tsc',
    '--outDir',
    join(work, 'support'),
    '--module',
    'nodenext',
    '--moduleResolution',
    'nodenext',
    '--target',
    'es2022',
    '--types',
    'node',
    '--skipLibCheck',
    '--ignoreConfig',
    '__tests__/support/registry.ts',
    '__tests__/support/proxy.ts',
    '__tests__/support/oci-layout.ts',
    '__tests__/support/artifacts.ts',
  ],
  { stdio: 'inherit' },
);
writeFileSync(join(work, 'support', 'package.json'), '{"type":"module"}');
const load = (name) => import(pathToFileURL(join(work, 'support', `${name}.js`)).href);
const { startRegistry } = await load('registry');
const { startProxy } = await load('proxy');
const { generateLayout } = await load('oci-layout');
const { pushArtifact, putManifestBytes, referrer, referrersIndex, schemaTag, OCI_MANIFEST } =
  await load('artifacts');

function run(cmd, args, env = process.env) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c) => (out += c));
    child.stderr.on('data', (c) => (err += c));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20 * 60_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve({ out, err });
      else reject(new Error(`${cmd} ${args.slice(0, 3).join(' ')} exited ${code}: ${err.slice(-2000)}`));
    });
  });
}

/** Fresh registries behind latency relays for one contender, so no tool profits from another's uploads. */
async function withRegistries(count, fn) {
  const registries = await Promise.all(Array.from({ length: count }, () => startRegistry()));
  const relays = await Promise.all(
    registries.map((r) => startProxy({ target: r.host, latencyMs: LATENCY_MS })),
  );
  try {
    const started = performance.now();
    const result = await fn(relays.map((r) => r.host));
    const seconds = (performance.now() - started) / 1000;
    return {
      seconds,
      phases: phasesOf(result?.err),
      bytesUp: relays.reduce((n, r) => n + r.bytesUp(), 0),
      requests: relays.reduce((n, r) => n + r.records.length, 0),
    };
  } finally {
    await Promise.all(relays.map((r) => r.stop()));
    await Promise.all(registries.map((r) => r.stop()));
  }
}

const layout = generateLayout(join(work, 'layout'), {
  layers: [LAYER_MIB, LAYER_MIB, LAYER_MIB].map((m) => m * 1024 * 1024),
});
const unique = layout.blobBytes;

// podman pushes from its own storage: import the same image into a private store first (not timed).
const storageConf = join(work, 'storage.conf');
writeFileSync(
  storageConf,
  `[storage]\ndriver = "vfs"\ngraphroot = "${join(work, 'graph')}"\nrunroot = "${join(work, 'run')}"\n`,
);
const podmanEnv = { ...process.env, CONTAINERS_STORAGE_CONF: storageConf };
await run(
  'skopeo',
  ['copy', '--quiet', layout.transportRef, 'containers-storage:localhost/bench:latest'],
  podmanEnv,
);

/** `Phase 1 took 1.2 s, phase 2 340 ms.` from the action's log, in seconds. */
function phasesOf(log) {
  const m = /Phase 1 took ([\d.]+) (ms|s), phase 2 ([\d.]+) (ms|s)\./.exec(log ?? '');
  if (!m) return undefined;
  const s = (v, unit) => Number(v) / (unit === 'ms' ? 1000 : 1);
  return { phase1: s(m[1], m[2]), phase2: s(m[3], m[4]) };
}

const action = (hosts, tags, source = layout.transportRef, extra = []) =>
  run(process.execPath, [
    'dist/cli.js',
    'push-multi-tag',
    '--source',
    source,
    ...extra,
    '--repositories',
    hosts.map((h) => `${h}/bench/app`).join(','),
    '--tags',
    tags.join(','),
    '--insecure-registries',
    hosts.join(','),
  ]);
const skopeoCopy = (host, tag) =>
  run('skopeo', [
    'copy',
    '--quiet',
    '--dest-tls-verify=false',
    layout.transportRef,
    `docker://${host}/bench/app:${tag}`,
  ]);

const results = [];
const record = (name, registries, tags, r) => results.push({ name, registries, tags, ...r });

// The two phases against the per-registry flow (`atomic: false`), alternated 3 times each: the difference is what
// all-or-nothing tags cost; single runs on a shared 2-CPU VM vary by ±0.2 s.
const atomicRuns = [];
const perRegistryRuns = [];
for (let i = 0; i < 3; i++) {
  atomicRuns.push(await withRegistries(2, (hosts) => action(hosts, TAGS)));
  perRegistryRuns.push(
    await withRegistries(2, (hosts) => action(hosts, TAGS, layout.transportRef, ['--atomic=false'])),
  );
}
const medianRun = (runs) => [...runs].sort((a, b) => a.seconds - b.seconds)[Math.floor(runs.length / 2)];
record('image-ci push-multi-tag (median of 3)', 2, 10, medianRun(atomicRuns));
record('image-ci, atomic: false (median of 3)', 2, 10, medianRun(perRegistryRuns));
record(
  'skopeo copy loop',
  2,
  10,
  await withRegistries(2, async (hosts) => {
    for (const host of hosts) for (const tag of TAGS) await skopeoCopy(host, tag);
  }),
);
record(
  'podman push loop',
  2,
  10,
  await withRegistries(2, async (hosts) => {
    for (const host of hosts) {
      for (const tag of TAGS) {
        await run(
          'podman',
          [
            'push',
            '--quiet',
            '--tls-verify=false',
            'localhost/bench:latest',
            `docker://${host}/bench/app:${tag}`,
          ],
          podmanEnv,
        );
      }
    }
  }),
);
record('image-ci, 1 tag', 1, 1, await withRegistries(1, (hosts) => action(hosts, ['only'])));
record('skopeo copy, 1 tag', 1, 1, await withRegistries(1, (hosts) => skopeoCopy(hosts[0], 'only')));

// Promotion from a staging registry: the image plus 3 signatures and 1 SBOM attached to it (not timed).
const staging = await startRegistry();
const stagingRelay = await startProxy({ target: staging.host, latencyMs: LATENCY_MS });
try {
  await run('skopeo', [
    'copy',
    '--quiet',
    '--dest-tls-verify=false',
    layout.transportRef,
    `docker://${staging.host}/staging/app:rc`,
  ]);
  const subject = {
    mediaType: OCI_MANIFEST,
    digest: layout.digest,
    size: statSync(join(layout.dir, 'blobs', 'sha256', layout.digest.slice(7))).size,
  };
  const attached = [
    ...[1, 2, 3].map((i) =>
      referrer(subject, 'application/vnd.dev.cosign.artifact.sig.v1+json', `signature ${i}`),
    ),
    referrer(subject, 'application/spdx+json', JSON.stringify({ spdxVersion: 'SPDX-2.3', packages: [] })),
  ];
  for (const a of attached) await pushArtifact(staging.host, 'staging/app', a);
  await putManifestBytes(
    staging.host,
    'staging/app',
    schemaTag(layout.digest),
    referrersIndex(attached),
    'application/vnd.oci.image.index.v1+json',
  );
  const promote = (referrers) => (hosts) =>
    action(hosts, TAGS, `docker://${stagingRelay.host}/staging/app@${layout.digest}`, [
      `--referrers=${referrers}`,
      '--tls-verify=false',
    ]);
  record('image-ci promote, no referrers', 2, 10, await withRegistries(2, promote(false)));
  record('image-ci promote + 3 sigs + 1 SBOM', 2, 10, await withRegistries(2, promote(true)));
} finally {
  await stagingRelay.stop();
  await staging.stop();
}

await run('podman', ['rmi', '-a', '-f'], podmanEnv).catch(() => undefined);

const mib = (n) => (n / 1024 / 1024).toFixed(1);
const skopeoLoop = results.find((r) => r.name === 'skopeo copy loop');
const skopeoOne = results.find((r) => r.name === 'skopeo copy, 1 tag');
console.log(
  `\npush-multi-tag benchmark: ${mib(unique)} MiB unique blobs (3 layers), relay latency ${LATENCY_MS} ms each way\n`,
);
console.log(
  '| contender | registries × tags | wall s | phase 1 s | phase 2 s | requests | MiB up | bytes / unique per registry | time vs skopeo |',
);
console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |');
for (const r of results) {
  const base = r.tags === 1 ? skopeoOne : skopeoLoop;
  const phase = (key) => (r.phases ? r.phases[key].toFixed(2) : '-');
  console.log(
    `| ${r.name} | ${r.registries} × ${r.tags} | ${r.seconds.toFixed(2)} | ${phase('phase1')} | ${phase('phase2')} | ` +
      `${r.requests} | ${mib(r.bytesUp)} | ${(r.bytesUp / (unique * r.registries)).toFixed(3)} | ` +
      `${(r.seconds / base.seconds).toFixed(3)}x |`,
  );
}
const wall = (runs) => runs.map((r) => r.seconds.toFixed(2)).join(', ');
const atomicMedian = medianRun(atomicRuns).seconds;
const perRegistryMedian = medianRun(perRegistryRuns).seconds;
console.log(
  `\nTwo phases (atomic) ${atomicMedian.toFixed(2)} s [${wall(atomicRuns)}] vs per-registry (atomic: false) ` +
    `${perRegistryMedian.toFixed(2)} s [${wall(perRegistryRuns)}]: the phases cost ` +
    `${(atomicMedian - perRegistryMedian).toFixed(2)} s = ${((atomicMedian - perRegistryMedian) / ((2 * LATENCY_MS) / 1000)).toFixed(1)} round trips ` +
    `(goal: at most 1). Against the skopeo loop: ${(atomicMedian / skopeoLoop.seconds).toFixed(3)}x (goal <= 0.1x).`,
);
