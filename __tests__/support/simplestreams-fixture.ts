/**
 * Writes real-shaped simplestreams repositories for prune tests, in both layouts:
 * - flat, as `incus-simplestreams add` writes it: images/<sha256 of metadata>.incus.tar.xz, .squashfs, .qcow2,
 *   versions like 202401011200;
 * - nested, as images.linuxcontainers.org: images/<os>/<release>/<arch>/<variant>/<serial>/incus.tar.xz,
 *   rootfs.squashfs, disk.qcow2, delta-<prev>.vcdiff, SHA256SUMS, *.asc; versions like 20240101_12:00.
 * Items carry real sizes and sha256 sums; lxd.tar.xz and incus.tar.xz share one file as on real servers.
 */
import { createHash, randomBytes } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
  type Stats,
} from 'node:fs';
import { setTimeout as delay } from 'node:timers/promises';
import { basename, dirname, join, relative } from 'node:path';
import { CliHost } from '../../src/core/host.js';
import { MapInputSource } from '../../src/core/inputs.js';
import { applyPlan, type ApplyResult } from '../../src/actions/prune-simplestreams/apply.js';
import { loadCatalog } from '../../src/actions/prune-simplestreams/catalog.js';
import type { PruneInputs } from '../../src/actions/prune-simplestreams/inputs.js';
import { planPrune, type Plan } from '../../src/actions/prune-simplestreams/plan.js';
import { pruneRepository } from '../../src/actions/prune-simplestreams/prune.js';
import { scanRepository } from '../../src/actions/prune-simplestreams/scan.js';
import type { PruneReport } from '../../src/actions/prune-simplestreams/report.js';

export type Layout = 'flat' | 'nested';
type Json = Record<string, unknown>;

export interface VersionSpec {
  /** Also ship a VM disk (disk-kvm.img) sharing the metadata tarball. */
  vm?: boolean;
  /** Add a squashfs.vcdiff delta item against this earlier version. */
  deltaFrom?: string;
  /** Reuse this rootfs path instead of writing a new one (shared between products or versions). */
  sharedRootfs?: string;
  /** Delete the rootfs file after writing: the version is broken. */
  broken?: boolean;
  /** Write SHA256SUMS/.asc sidecars next to the files (nested) or <file>.asc (flat). */
  sidecars?: boolean;
  /** mtime of the version's files, ms before now (default: a week). */
  ageMs?: number;
}

export interface WrittenVersion {
  product: string;
  version: string;
  paths: string[];
  rootfs: string;
}

const HOUR = 3_600_000;

/**
 * A clock for in-process prunes (the repo's `nowMs` and pruneAt's) that runs CLOCK_AHEAD_DAYS ahead of the real
 * one. A prune counts a file's age from the later of its mtime and ctime, and ctime is always the real time the
 * fixture wrote the file (utimes cannot set it back): on this clock it lies that far in the past, so the mtimes
 * the fixture sets relative to the clock decide every age the tests tell apart (all much shorter).
 */
const CLOCK_AHEAD_DAYS = 60;

export function clockAhead(): number {
  return Date.now() + CLOCK_AHEAD_DAYS * 24 * HOUR;
}

function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

export class SimplestreamsRepo {
  readonly images: Json = {
    content_id: 'images',
    datatype: 'image-downloads',
    format: 'products:1.0',
    updated: 'Mon, 01 Jan 2024 00:00:00 +0000',
    x_unknown_top: { keep: ['me'] },
    products: {} as Json,
  };
  private readonly written = new Map<string, Buffer>();

  constructor(
    readonly root: string,
    readonly layout: Layout,
    readonly nowMs: number = Date.now(),
  ) {
    mkdirSync(join(root, 'streams/v1'), { recursive: true });
  }

  private file(path: string, content: Buffer | string, ageMs: number): { size: number; sha256: string } {
    const abs = join(this.root, path);
    mkdirSync(dirname(abs), { recursive: true });
    const data = Buffer.isBuffer(content) ? content : Buffer.from(content);
    writeFileSync(abs, data);
    this.age(path, ageMs);
    this.written.set(path, data);
    return { size: data.length, sha256: sha256(data) };
  }

  /** Sets a file's (or directory's) mtime to `ageMs` before the repo's clock (see clockAhead: not its ctime). */
  age(path: string, ageMs: number): void {
    const t = (this.nowMs - ageMs) / 1000;
    utimesSync(join(this.root, path), t, t);
  }

  private productEntry(product: string): Json {
    const products = this.images.products as Json;
    if (!products[product]) {
      const [os, release, variant, arch] = product.split(':');
      products[product] = {
        aliases: `${os}/${release}/${variant},${os}/${release}`,
        arch,
        os,
        release,
        release_title: release,
        variant,
        x_vendor_field: 42,
        versions: {},
      };
    }
    return products[product] as Json;
  }

  addVersion(product: string, version: string, spec: VersionSpec = {}): WrittenVersion {
    const age = spec.ageMs ?? 7 * 24 * HOUR;
    const [os, release, variant, arch] = product.split(':');
    const seed = `${product}@${version}`;
    const meta = Buffer.from(`metadata ${seed}\n`.repeat(3));
    const metaSha = sha256(meta);
    const dir = this.layout === 'nested' ? `images/${os}/${release}/${arch}/${variant}/${version}` : 'images';
    const name = (nested: string, flat: string) =>
      this.layout === 'nested' ? `${dir}/${nested}` : `${dir}/${metaSha}${flat}`;
    const metaPath = name('incus.tar.xz', '.incus.tar.xz');
    const metaFile = this.file(metaPath, meta, age);
    const paths = [metaPath];
    const items: Json = {};
    const metaItem: Json = { ftype: 'incus.tar.xz', path: metaPath, ...metaFile };

    let rootfsPath: string;
    let rootfs: { size: number; sha256: string };
    if (spec.sharedRootfs) {
      rootfsPath = spec.sharedRootfs;
      const data = this.written.get(rootfsPath);
      if (!data) throw new Error(`fixture: shared rootfs ${rootfsPath} was not written`);
      rootfs = { size: data.length, sha256: sha256(data) };
    } else {
      rootfsPath = name('rootfs.squashfs', '.squashfs');
      rootfs = this.file(rootfsPath, `squashfs ${seed}\n`.repeat(8), age);
    }
    paths.push(rootfsPath);
    metaItem.combined_squashfs_sha256 = sha256(Buffer.concat([meta, this.written.get(rootfsPath)!]));
    items.squashfs = { ftype: 'squashfs', path: rootfsPath, ...rootfs };
    if (spec.vm) {
      const diskPath = name('disk.qcow2', '.qcow2');
      const disk = this.file(diskPath, `qcow2 ${seed}\n`.repeat(16), age);
      paths.push(diskPath);
      metaItem['combined_disk-kvm-img_sha256'] = sha256(Buffer.concat([meta, this.written.get(diskPath)!]));
      items['disk-kvm.img'] = { ftype: 'disk-kvm.img', path: diskPath, ...disk };
    }
    if (spec.deltaFrom) {
      const deltaPath = name(`delta-${spec.deltaFrom}.vcdiff`, `.${spec.deltaFrom}.squashfs.vcdiff`);
      const delta = this.file(deltaPath, `vcdiff ${seed} from ${spec.deltaFrom}\n`, age);
      paths.push(deltaPath);
      items[`delta-${spec.deltaFrom}.vcdiff`] = {
        ftype: 'squashfs.vcdiff',
        path: deltaPath,
        delta_base: spec.deltaFrom,
        ...delta,
      };
    }
    items['incus.tar.xz'] = metaItem;
    // LXD clients read lxd.tar.xz; servers that serve both point it at the same metadata file.
    items['lxd.tar.xz'] = { ...metaItem, ftype: 'lxd.tar.xz' };
    if (spec.sidecars) {
      if (this.layout === 'nested') {
        const sums = paths
          .filter((p) => p.startsWith(`${dir}/`))
          .map((p) => `${sha256(this.written.get(p)!)}  ${p.slice(dir.length + 1)}`);
        this.file(`${dir}/SHA256SUMS`, `${sums.join('\n')}\n`, age);
        this.file(`${dir}/SHA256SUMS.asc`, `signature of SHA256SUMS ${seed}\n`, age);
        this.file(`${metaPath}.asc`, `signature ${seed}\n`, age);
      } else {
        this.file(`${metaPath}.asc`, `signature ${seed}\n`, age);
      }
    }
    if (spec.broken) rmSync(join(this.root, rootfsPath));
    const entry = this.productEntry(product);
    (entry.versions as Json)[version] = { items, label: 'fixture', x_version_extra: { n: 1 } };
    if (this.layout === 'nested') this.age(dir, age);
    return { product, version, paths, rootfs: rootfsPath };
  }

  /** A file nothing references (an old leftover or an upload in progress). */
  addOrphan(path: string, ageMs: number, size = 100): void {
    this.file(path, Buffer.alloc(size, 7), ageMs);
  }

  /**
   * Moves the file at `path` to `target` (another place in the repository) and leaves a relative symlink to it
   * at `path`, as a publisher that deduplicates files does; images.json still names `path`.
   */
  moveBehindSymlink(path: string, target: string): void {
    mkdirSync(dirname(join(this.root, target)), { recursive: true });
    renameSync(join(this.root, path), join(this.root, target));
    this.symlink(path, relative(dirname(join(this.root, path)), join(this.root, target)));
  }

  /** A symlink at `path` holding `target` as given, its own mtime `ageMs` before the repo's clock. */
  symlink(path: string, target: string, ageMs = 7 * 24 * HOUR): void {
    mkdirSync(dirname(join(this.root, path)), { recursive: true });
    symlinkSync(target, join(this.root, path));
    const t = (this.nowMs - ageMs) / 1000;
    lutimesSync(join(this.root, path), t, t);
  }

  /** Pretends an earlier prune recorded `path` as unreferenced `agoMs` before now. */
  writeState(entries: Record<string, number>): void {
    const unreferencedSince = Object.fromEntries(
      Object.entries(entries).map(([p, ago]) => [p, new Date(this.nowMs - ago).toISOString()]),
    );
    writeFileSync(
      join(this.root, '.image-ci-prune-state.json'),
      `${JSON.stringify({ version: 1, unreferencedSince }, null, 2)}\n`,
    );
  }

  /** Writes images.json and index.json (index product list unsorted, as incus-simplestreams leaves it). */
  write(style: { indent?: number } = { indent: 2 }): void {
    const products = Object.keys(this.images.products as Json).reverse();
    const index = {
      format: 'index:1.0',
      x_index_extra: true,
      index: {
        images: {
          datatype: 'image-downloads',
          path: 'streams/v1/images.json',
          format: 'products:1.0',
          updated: 'Mon, 01 Jan 2024 00:00:00 +0000',
          products,
        },
      },
    };
    const json = (d: unknown) =>
      style.indent ? `${JSON.stringify(d, null, style.indent)}\n` : JSON.stringify(d);
    writeFileSync(join(this.root, 'streams/v1/images.json'), json(this.images));
    writeFileSync(join(this.root, 'streams/v1/index.json'), json(index));
  }
}

/**
 * Copies the subtree `top` of `from` into `to` the way `rsync -a` publishes (no lock taken): each directory made
 * before its contents and given the source's mtime after them; each file written to a temp `.<name>.XXXXXX` beside
 * it, given the source's mtime, then renamed into place; symlinks copied as links with their own mtime. The
 * preserved mtimes are as old as the build; only ctime tells the copies are new. Call it for `images` first and
 * `streams` last, as rsync's sorted order does.
 */
export function copyLikeRsync(from: string, to: string, top: string): void {
  const copy = (rel: string) => {
    const src = join(from, rel);
    const dst = join(to, rel);
    const info = lstatSync(src);
    if (info.isDirectory()) {
      mkdirSync(dst, { recursive: true });
      for (const name of readdirSync(src).sort()) copy(`${rel}/${name}`);
      utimesSync(dst, info.atime, info.mtime);
    } else if (info.isSymbolicLink()) {
      rmSync(dst, { force: true });
      symlinkSync(readlinkSync(src), dst);
      lutimesSync(dst, info.atime, info.mtime);
    } else {
      const temp = join(dirname(dst), `.${basename(dst)}.${randomBytes(3).toString('hex')}`);
      copyFileSync(src, temp);
      utimesSync(temp, info.atime, info.mtime);
      renameSync(temp, dst);
    }
  };
  copy(top);
}

export function readImages(root: string): Json {
  return JSON.parse(readFileSync(join(root, 'streams/v1/images.json'), 'utf8')) as Json;
}

export interface ItemRef {
  product: string;
  version: string;
  item: string;
  path: string;
  size: number;
  sha256: string;
  delta_base?: string;
}

export function listItems(root: string): ItemRef[] {
  const refs: ItemRef[] = [];
  const products = readImages(root).products as Record<
    string,
    { versions: Record<string, { items: Record<string, ItemRef> }> }
  >;
  for (const [product, p] of Object.entries(products)) {
    for (const [version, v] of Object.entries(p.versions)) {
      for (const [item, i] of Object.entries(v.items)) refs.push({ ...i, product, version, item });
    }
  }
  return refs;
}

export function versionsOf(root: string, product: string): string[] {
  const products = readImages(root).products as Record<string, { versions: Record<string, unknown> }>;
  return Object.keys(products[product]?.versions ?? {}).sort();
}

/**
 * What a client needs: both files parse, index.json lists exactly the products of images.json, and every
 * referenced file exists with its size and sha256. Returns the problems found (empty when valid).
 */
export function repoProblems(root: string): string[] {
  const problems: string[] = [];
  let products: string[];
  try {
    products = Object.keys(readImages(root).products as Json);
    const index = JSON.parse(readFileSync(join(root, 'streams/v1/index.json'), 'utf8')) as {
      index: { images: { products: string[] } };
    };
    const listed = new Set(index.index.images.products);
    // index.json is written after images.json: it may still list a product images.json just lost (harmless
    // to clients), never miss one images.json has.
    for (const p of products) if (!listed.has(p)) problems.push(`index.json does not list ${p}`);
  } catch (error) {
    return [`metadata unreadable: ${(error as Error).message}`];
  }
  for (const item of listItems(root)) {
    const abs = join(root, item.path);
    if (!existsSync(abs)) {
      problems.push(`missing ${item.path} (${item.product} ${item.version} ${item.item})`);
      continue;
    }
    if (statSync(abs).size !== item.size) problems.push(`size of ${item.path}`);
    else if (sha256(readFileSync(abs)) !== item.sha256) problems.push(`sha256 of ${item.path}`);
  }
  return problems;
}

/** Every entry under root (dot files included, symlinks not followed) with its lstat, parents first. */
function* entries(root: string, rel = ''): Generator<{ path: string; info: Stats }> {
  for (const entry of readdirSync(rel ? join(root, rel) : root, { withFileTypes: true })) {
    const path = rel ? `${rel}/${entry.name}` : entry.name;
    const info = lstatSync(join(root, path));
    yield { path, info };
    if (info.isDirectory()) yield* entries(root, path);
  }
}

/** Every entry under root (dot files included) with size, mtime and content hash: equal snapshots = untouched. */
export function snapshotTree(root: string): Map<string, string> {
  const result = new Map<string, string>();
  for (const { path, info } of entries(root)) {
    if (info.isDirectory()) result.set(`${path}/`, `${info.mtimeMs}`);
    else if (info.isSymbolicLink()) result.set(path, `-> ${readlinkSync(join(root, path))}`);
    else result.set(path, `${info.size}:${info.mtimeMs}:${sha256(readFileSync(join(root, path)))}`);
  }
  return result;
}

/**
 * Waits until nothing under `root` changed for `ms`, by the later of mtime and ctime as a prune counts: a copy
 * (`cp -p`, `rsync -a`) is new to a prune however old its mtimes are, and for a prune that runs dist/ on the real
 * clock only time makes it old.
 */
export async function waitUnchangedFor(root: string, ms: number): Promise<void> {
  let changed = 0;
  for (const { info } of entries(root)) changed = Math.max(changed, info.mtimeMs, info.ctimeMs);
  const left = changed + ms - Date.now();
  if (left > 0) await delay(left);
}

/** Regular files under root (relative paths, sorted), without the prune's own state file. */
export function listFiles(root: string): string[] {
  return [...snapshotTree(root).keys()]
    .filter((p) => !p.endsWith('/') && p !== '.image-ci-prune-state.json')
    .sort();
}

/** What a finished prune leaves: metadata bytes, every file (dot files included) and the state file. */
export function pruneOutcome(root: string): {
  images: string;
  index: string;
  state: string;
  files: string[];
} {
  const read = (p: string) => (existsSync(join(root, p)) ? readFileSync(join(root, p), 'utf8') : '(none)');
  return {
    images: read('streams/v1/images.json'),
    index: read('streams/v1/index.json'),
    state: read('.image-ci-prune-state.json'),
    files: listFiles(root),
  };
}

/**
 * A kill between creating a lock temp file and writing it leaves an empty one, which only its age can condemn (a
 * live prune may be between those two steps). Ages such files past the one-minute rule, so the next prune sweeps
 * them; returns how many there were.
 */
export function ageEmptyLockTemps(root: string): number {
  const empty = readdirSync(root).filter(
    (n) =>
      /^\.\.image-ci-prune\.lock\.[0-9a-f]{8}\.tmp$/.test(n) && readFileSync(join(root, n), 'utf8') === '',
  );
  const old = new Date(Date.now() - 2 * 60_000);
  for (const n of empty) utimesSync(join(root, n), old, old);
  return empty.length;
}

/** Inputs for an in-process prune of `path`: two versions kept, a one-hour grace period, sha256 verify. */
export function pruneInputs(path: string, o: Partial<PruneInputs> = {}): PruneInputs {
  return {
    path,
    keepVersions: 2,
    gracePeriodMs: HOUR,
    products: [],
    keepBroken: false,
    dryRun: false,
    verify: 'sha256',
    lockTimeoutMs: 5000,
    ...o,
  };
}

/** One whole prune in this process on the clock `nowMs`, with every log line it printed. */
export async function pruneAt(
  i: PruneInputs,
  nowMs: number,
): Promise<{ report: PruneReport; log: string[] }> {
  const log: string[] = [];
  const host = new CliHost({
    inputs: new MapInputSource({}),
    log: (l) => log.push(l),
    out: (l) => log.push(l),
  });
  const report = await pruneRepository(i, host, { now: () => nowMs });
  return { report, log };
}

/** The error a prune that must fail ends with. */
export async function pruneFailure(i: PruneInputs, nowMs: number): Promise<Error> {
  try {
    await pruneAt(i, nowMs);
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected the prune to fail');
}

/**
 * Loads, scans and plans like a prune of `i.path` at `nowMs` (no state file), then lets `meanwhile` change the
 * repository (a publisher that takes no lock) before the plan is applied: the plan, and what applying it returned
 * or threw.
 */
export async function applyAfter(
  i: PruneInputs,
  nowMs: number,
  meanwhile: () => void,
): Promise<{ plan: Plan; applied: ApplyResult | Error }> {
  const catalog = await loadCatalog(i.path);
  const facts = await scanRepository(i.path, catalog, []);
  const plan = planPrune(catalog, facts, new Map(), { ...i, nowMs });
  meanwhile();
  const applied = await applyPlan(i.path, catalog, plan, new Map()).catch((error: Error) => error);
  return { plan, applied };
}
