// Benchmark: prune-simplestreams on a generated repository (nested images.linuxcontainers.org layout, sparse
// files) against the I/O floor, a full `find` walk that stats every entry of the same tree.
// incus-simplestreams' own prune is not available here, hence the floor as the comparison.
//
// usage: npm run build && node bench/prune-simplestreams.mjs [--products 200] [--versions 20] [--keep 3] [--runs 3]
// Needs /usr/bin/time (Debian package `time`) for peak RSS. Goal: the prune <= 2 s and <= 200 MiB.
import { execFileSync, spawnSync } from 'node:child_process';
import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  ftruncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const args = process.argv.slice(2);
const arg = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const PRODUCTS = arg('products', 200);
const VERSIONS = arg('versions', 20);
const KEEP = arg('keep', 3);
const ROOTFS_BYTES = 256 * 1024 * 1024; // sparse: no blocks are written
const CLI = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '..', 'dist', 'cli.js');

function sparse(path, size) {
  const fd = openSync(path, 'w');
  ftruncateSync(fd, size);
  closeSync(fd);
}

function fakeSha(seed) {
  return seed
    .split('')
    .reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7)
    .toString(16)
    .padStart(8, '0')
    .repeat(8);
}

function generate(root) {
  const products = {};
  for (let p = 0; p < PRODUCTS; p++) {
    const [os, release, variant, arch] = [`os${p % 25}`, `r${Math.floor(p / 25)}`, 'default', 'amd64'];
    const versions = {};
    for (let v = 0; v < VERSIONS; v++) {
      const day = new Date(Date.UTC(2024, 0, 1 + v));
      const serial = `${day.toISOString().slice(0, 10).replace(/-/g, '')}_01:00`;
      const dir = `images/${os}/${release}/${arch}/${variant}/${serial}`;
      mkdirSync(join(root, dir), { recursive: true });
      const meta = `metadata ${p} ${serial}\n`.repeat(20);
      writeFileSync(join(root, dir, 'incus.tar.xz'), meta);
      sparse(join(root, dir, 'rootfs.squashfs'), ROOTFS_BYTES);
      writeFileSync(
        join(root, dir, 'SHA256SUMS'),
        `${fakeSha(dir)}  incus.tar.xz\n${fakeSha(serial)}  rootfs.squashfs\n`,
      );
      const metaItem = {
        ftype: 'incus.tar.xz',
        path: `${dir}/incus.tar.xz`,
        size: meta.length,
        sha256: fakeSha(meta),
      };
      metaItem.combined_squashfs_sha256 = fakeSha(`${meta}x`);
      versions[serial] = {
        items: {
          'incus.tar.xz': metaItem,
          'lxd.tar.xz': { ...metaItem, ftype: 'lxd.tar.xz' },
          squashfs: {
            ftype: 'squashfs',
            path: `${dir}/rootfs.squashfs`,
            size: ROOTFS_BYTES,
            sha256: fakeSha(dir),
          },
        },
      };
    }
    products[`${os}:${release}:${variant}:${arch}`] = {
      aliases: `${os}/${release}/${variant}`,
      arch,
      os,
      release,
      release_title: release,
      variant,
      versions,
    };
  }
  mkdirSync(join(root, 'streams/v1'), { recursive: true });
  writeFileSync(
    join(root, 'streams/v1/images.json'),
    JSON.stringify({ content_id: 'images', datatype: 'image-downloads', format: 'products:1.0', products }),
  );
  writeFileSync(
    join(root, 'streams/v1/index.json'),
    JSON.stringify({
      format: 'index:1.0',
      index: {
        images: {
          datatype: 'image-downloads',
          path: 'streams/v1/images.json',
          format: 'products:1.0',
          products: Object.keys(products),
        },
      },
    }),
  );
}

/** Wall time and peak RSS of one command, from GNU time. */
function measure(cmd, cmdArgs) {
  const r = spawnSync('/usr/bin/time', ['-f', 'ICI_TIME %e %M', cmd, ...cmdArgs], {
    encoding: 'utf8',
    maxBuffer: 1024 * 1024 * 1024,
  });
  const m = /ICI_TIME ([\d.]+) (\d+)/.exec(r.stderr);
  if (r.status !== 0 || !m) throw new Error(`${cmd} failed (${r.status}): ${r.stderr.slice(-2000)}`);
  return { seconds: Number(m[1]), rssMiB: Number(m[2]) / 1024 };
}

const RUNS = arg('runs', 3);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const inner = (r) => (Date.parse(r.finishedAt) - Date.parse(r.startedAt)) / 1000;
// The versions a prune keeping KEEP drops: the oldest VERSIONS - KEEP serials (days 1.. of January 2024).
const droppedRegex = () => {
  const days = Array.from({ length: VERSIONS - KEEP }, (_, v) =>
    new Date(Date.UTC(2024, 0, 1 + v)).toISOString().slice(0, 10).replace(/-/g, ''),
  );
  return `.*/(${days.join('|')})_01:00(/.*)?`;
};

const rows = new Map();
const record = (label, seconds, rssMiB, innerSeconds) => {
  const row = rows.get(label) ?? { seconds: [], rss: [], inner: [] };
  row.seconds.push(seconds);
  row.rss.push(rssMiB);
  if (innerSeconds !== undefined) row.inner.push(innerSeconds);
  rows.set(label, row);
};
let summary = '';
const base = mkdtempSync(join(tmpdir(), 'ici-bench-prune-'));
try {
  for (let run = 1; run <= RUNS; run++) {
    const repo = join(base, `repo-${run}`);
    const copy = join(base, `copy-${run}`);
    const t0 = Date.now();
    generate(repo);
    generate(copy);
    if (run === 1) {
      const files = execFileSync('find', [repo, '-type', 'f', '-printf', '.'], { encoding: 'utf8' }).length;
      console.log(
        `generated ${PRODUCTS} products x ${VERSIONS} versions: ${files} files, ${PRODUCTS * VERSIONS} version dirs ` +
          `(sparse rootfs ${ROOTFS_BYTES / 2 ** 20} MiB each), twice, in ${((Date.now() - t0) / 1000).toFixed(1)} s; ${RUNS} runs, medians below`,
      );
    }
    const walk = measure('find', [repo, '-printf', '%p %s %T@\n']);
    record('floor A: find + stat walk of the tree', walk.seconds, walk.rssMiB);
    const report = join(base, 'report.json');
    const first = measure(process.execPath, [
      CLI,
      'prune-simplestreams',
      '--path',
      repo,
      '--keep-versions',
      String(KEEP),
      '--report-file',
      report,
    ]);
    const firstReport = JSON.parse(readFileSync(report, 'utf8'));
    record(
      `prune keep ${KEEP}, grace 1h (drop versions, defer files) vs A`,
      first.seconds,
      first.rssMiB,
      inner(firstReport),
    );
    const del = measure('find', [
      join(copy, 'images'),
      '-regextype',
      'posix-extended',
      '-regex',
      droppedRegex(),
      '-delete',
    ]);
    record('floor B: find walk + delete the same files and dirs', del.seconds, del.rssMiB);
    const second = measure(process.execPath, [
      CLI,
      'prune-simplestreams',
      '--path',
      repo,
      '--keep-versions',
      String(KEEP),
      '--grace-period',
      '0s',
      '--report-file',
      report,
    ]);
    const secondReport = JSON.parse(readFileSync(report, 'utf8'));
    record(
      `prune again, grace 0s (delete the files) vs B`,
      second.seconds,
      second.rssMiB,
      inner(secondReport),
    );
    // The prune leaves one more file: its state file.
    const left = (dir) =>
      execFileSync('find', [dir, '-type', 'f', '-printf', '.'], { encoding: 'utf8' }).length;
    if (left(repo) - 1 !== left(copy))
      throw new Error(`the floor deleted other files than the prune: ${left(repo)} vs ${left(copy)}`);
    summary =
      `first prune: ${firstReport.totals.removedVersions} versions removed, ${firstReport.totals.deferredFiles} files deferred; ` +
      `second: ${secondReport.totals.removedFiles} files deleted (${(secondReport.totals.freedBytes / 2 ** 30).toFixed(1)} GiB apparent), ` +
      `${secondReport.files.dirsRemoved.length} dirs removed`;
    rmSync(repo, { recursive: true, force: true });
    rmSync(copy, { recursive: true, force: true });
  }
  console.log('');
  console.log('| run | wall s | in-prune s | peak RSS MiB | time ratio | RSS ratio |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  const floors = [...rows.entries()].filter(([l]) => l.startsWith('floor'));
  const [floorA, floorB] = floors.map(([, r]) => r);
  for (const [label, r] of rows) {
    const floor = label.endsWith('vs A') ? floorA : label.endsWith('vs B') ? floorB : undefined;
    const s = median(r.seconds);
    const m = median(r.rss);
    console.log(
      `| ${label} | ${s.toFixed(2)} | ${r.inner.length ? median(r.inner).toFixed(2) : ''} | ${m.toFixed(1)} | ` +
        `${floor ? (s / Math.max(median(floor.seconds), 0.01)).toFixed(1) : '1.0'} | ${floor ? (m / median(floor.rss)).toFixed(1) : '1.0'} |`,
    );
  }
  console.log('');
  console.log(summary);
  // The goal is for the prune itself; a deletion run is bounded by the filesystem, so it is judged by floor B.
  const [prune] = [...rows.entries()].filter(([l]) => l.startsWith('prune keep')).map(([, r]) => r);
  const [seconds, rss] = [median(prune.seconds), median(prune.rss)];
  console.log(
    `goal for the prune keeping ${KEEP} (<= 2 s wall with node start, <= 200 MiB): ` +
      `${seconds <= 2 && rss <= 200 ? 'met' : 'NOT met'} (${seconds.toFixed(2)} s, ${rss.toFixed(1)} MiB)`,
  );
} finally {
  rmSync(base, { recursive: true, force: true });
}
