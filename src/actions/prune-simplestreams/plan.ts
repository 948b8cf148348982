/**
 * The pure half of a prune: from the catalog, the facts on disk, the state file and the options, decide which
 * versions and items leave images.json, which files are deleted now, which wait for their grace period, and
 * what the state file says afterwards. No I/O here, so every rule is unit-tested directly.
 */
import {
  applyRemovals,
  fileOf,
  isEmptyRemovals,
  itemKey,
  rebuildIndex,
  type Catalog,
  type CatalogItem,
  type CatalogVersion,
  type JsonObject,
  type Removals,
} from './catalog.js';
import { CLOCK_TOLERANCE_MS } from './constants.js';
import { productMatcher, unmatchedPatterns, type UnmatchedPattern } from './product-filter.js';
import { baseOf, contentDirOf, isSidecar, parentOf } from './repo-paths.js';
import type { FileFact, RepoFacts, Times } from './scan.js';
import type { UnreferencedSince } from './state-file.js';
import { compareC, isClientVersion, versionTimeMs } from './versions.js';

export interface PlanOptions {
  keepVersions: number;
  maxAgeMs?: number;
  gracePeriodMs: number;
  products: readonly string[];
  keepBroken: boolean;
  nowMs: number;
  /**
   * The time the state file records for a file that stops being referenced now, when not `nowMs`: the repository
   * file system's clock, which every prune's state shares whatever its own machine's clock says.
   */
  recordNowMs?: number;
}

export type DropReason = 'retention' | 'max-age' | 'broken';

export interface ProductPlan {
  name: string;
  /** False when the `products` filter left it out: nothing of it is changed. */
  selected: boolean;
  /** Listed versions kept, newest first. */
  kept: string[];
  dropped: { version: string; reason: DropReason }[];
  /** Versions with missing or wrong-sized files (dropped unless keep-broken). */
  broken: { version: string; problems: string[] }[];
  /** Versions clients never list (no YYYYMMDD prefix): left untouched and not counted. */
  ignored: string[];
  removedItems: { version: string; item: string; reason: 'delta-base-gone' | 'delta-file-missing' }[];
  /** The whole product left images.json (every version was broken). */
  removed: boolean;
}

export type FileReason = 'unreferenced' | 'orphan' | 'sidecar';

export interface FileAction {
  path: string;
  size: number;
  reason: FileReason;
  /** When the grace period of this file ends (epoch ms); <= now for deletions. */
  deletableAtMs: number;
  /** The entry as the scan saw it: a file changed or replaced since then is not the one judged, and stays. */
  seen: FileFact;
  /**
   * False when the metadata on disk names it no more: it may go before the metadata is rewritten (apply.ts deletes
   * those first, so a full file system has room for the writes). Sidecars count as named (their files may be).
   */
  named: boolean;
}

export interface Plan {
  products: ProductPlan[];
  /** `products` patterns that select nothing (a typo?): warned about and reported, never an error. */
  unmatchedPatterns: UnmatchedPattern[];
  removals: Removals;
  /** New images.json / index.json data, only when they change. */
  images?: JsonObject;
  index?: JsonObject;
  delete: FileAction[];
  defer: FileAction[];
  /** Directories that end up empty, deepest first. */
  dirsToRemove: string[];
  /** Written before the metadata changes, so a crash never loses when a file stopped being referenced. */
  stateDuring: UnreferencedSince;
  stateAfter: UnreferencedSince;
  /** Items of the kept valid versions, checked by `verify` afterwards. */
  verifyItems: CatalogItem[];
}

function isDelta(item: CatalogItem): boolean {
  return item.deltaBase !== undefined || item.ftype.endsWith('.vcdiff');
}

function itemProblem(item: CatalogItem, facts: RepoFacts): string | undefined {
  const fact = facts.referenced.get(item.path);
  if (!fact?.exists) return `missing ${item.path}`;
  if (item.size !== undefined && fact.size !== item.size) {
    return `${item.path} has ${fact.size} bytes, images.json says ${item.size}`;
  }
  return undefined;
}

function versionProblems(version: CatalogVersion, facts: RepoFacts): string[] {
  const full = version.items.filter((i) => !isDelta(i));
  if (full.length === 0) return ['no image items (only deltas or nothing)'];
  return full.map((i) => itemProblem(i, facts)).filter((p): p is string => p !== undefined);
}

function emptyProductPlan(name: string, selected: boolean): ProductPlan {
  return { name, selected, kept: [], dropped: [], broken: [], ignored: [], removedItems: [], removed: false };
}

function planProduct(
  product: Catalog['products'][number],
  facts: RepoFacts,
  options: PlanOptions,
  removals: Removals,
  verifyItems: CatalogItem[],
): ProductPlan {
  const plan = emptyProductPlan(product.name, true);
  const listed = product.versions
    .filter((v) => isClientVersion(v.name))
    .sort((a, b) => compareC(b.name, a.name));
  plan.ignored = product.versions.filter((v) => !isClientVersion(v.name)).map((v) => v.name);

  const problems = new Map(listed.map((v) => [v.name, versionProblems(v, facts)]));
  const candidates: CatalogVersion[] = [];
  for (const v of listed) {
    const p = problems.get(v.name)!;
    if (p.length > 0) plan.broken.push({ version: v.name, problems: p });
    if (p.length === 0 || options.keepBroken) candidates.push(v);
    else plan.dropped.push({ version: v.name, reason: 'broken' });
  }
  const keptVersions: CatalogVersion[] = [];
  candidates.forEach((v, i) => {
    if (keptVersions.length >= options.keepVersions) {
      plan.dropped.push({ version: v.name, reason: 'retention' });
    } else if (
      i > 0 &&
      options.maxAgeMs !== undefined &&
      options.nowMs - versionTimeMs(v.name)! > options.maxAgeMs
    ) {
      plan.dropped.push({ version: v.name, reason: 'max-age' });
    } else {
      keptVersions.push(v);
    }
  });
  plan.kept = keptVersions.map((v) => v.name);
  plan.dropped.sort((a, b) => compareC(b.version, a.version));

  const remaining = new Set([...plan.kept, ...plan.ignored]);
  for (const v of keptVersions) {
    const gone = new Set<string>();
    for (const item of v.items) {
      if (!isDelta(item)) continue;
      if (item.deltaBase !== undefined && !remaining.has(item.deltaBase)) {
        plan.removedItems.push({ version: v.name, item: item.name, reason: 'delta-base-gone' });
        gone.add(item.name);
      } else if (itemProblem(item, facts) !== undefined) {
        plan.removedItems.push({ version: v.name, item: item.name, reason: 'delta-file-missing' });
        gone.add(item.name);
      }
    }
    if (gone.size > 0) removals.items.set(itemKey(product.name, v.name), gone);
    if (problems.get(v.name)!.length === 0) verifyItems.push(...v.items.filter((i) => !gone.has(i.name)));
  }
  if (plan.dropped.length > 0 && remaining.size === 0) {
    plan.removed = true;
    removals.products.add(product.name);
  } else if (plan.dropped.length > 0) {
    removals.versions.set(product.name, new Set(plan.dropped.map((d) => d.version)));
  }
  return plan;
}

/** Every path images.json references, plus the real path behind each symlinked one and the links on the way. */
function referencedPaths(catalog: Catalog, facts: RepoFacts, removals?: Removals): Set<string> {
  // index.json may keep images.json anywhere, a content directory included: the metadata is never an orphan,
  // nor is a link on its way.
  const paths = new Set([
    ...[catalog.index, catalog.images].flatMap((doc) => [doc.path, fileOf(doc)]),
    ...facts.metadataLinks,
  ]);
  for (const product of catalog.products) {
    if (removals?.products.has(product.name)) continue;
    const droppedVersions = removals?.versions.get(product.name);
    for (const version of product.versions) {
      if (droppedVersions?.has(version.name)) continue;
      const droppedItems = removals?.items.get(itemKey(product.name, version.name));
      for (const item of version.items) {
        if (droppedItems?.has(item.name)) continue;
        paths.add(item.path);
        const fact = facts.referenced.get(item.path);
        if (fact?.real) paths.add(fact.real);
        for (const link of fact?.links ?? []) paths.add(link);
      }
    }
  }
  return paths;
}

/**
 * Whether a path lies in a content directory that only products the `products` filter left out use (nested
 * layout: their product directories; the nearest content directory above the path decides). A filtered prune
 * leaves everything there alone, uploads in progress and old empty directories included: they are those
 * products' business. A directory shared with a selected product (the flat layout's `images/`) stays in scope.
 */
function othersOnly(catalog: Catalog, selected: (name: string) => boolean): (path: string) => boolean {
  const mine = new Set<string>();
  const others = new Set<string>();
  for (const product of catalog.products) {
    const dirs = selected(product.name) ? mine : others;
    for (const version of product.versions) {
      for (const item of version.items) {
        const dir = contentDirOf(item.path);
        if (dir !== undefined) dirs.add(dir);
      }
    }
  }
  for (const dir of mine) others.delete(dir);
  if (others.size === 0) return () => false;
  return (path) => {
    for (let dir = parentOf(path); dir !== ''; dir = parentOf(dir)) {
      if (mine.has(dir)) return false;
      if (others.has(dir)) return true;
    }
    return false;
  };
}

/**
 * Since when an entry may have been in the repository: the later of its mtime and ctime. A publisher that copies
 * a repository built elsewhere (`rsync -a`, `cp -p`, `tar -x`) and takes no lock sets mtimes hours or days back,
 * and sends images/ before streams/v1/: by mtime alone, a prune in between deletes the new files just before the
 * new images.json names them. Nothing sets ctime back (utimes, rename and link all move it to now).
 *
 * An mtime still ahead of the file system's clock (`now`) is left out: whoever set it (a publisher's clock years
 * ahead, `touch -d 2100-01-01`) did so at ctime, which is then when the entry last arrived. Counted, it would
 * keep an orphan until that date.
 */
function changedMs(times: Times, nowMs: number): number {
  return times.mtimeMs > nowMs + CLOCK_TOLERANCE_MS ? times.ctimeMs : Math.max(times.mtimeMs, times.ctimeMs);
}

interface FileDecisions {
  delete: FileAction[];
  defer: FileAction[];
  stateAfter: UnreferencedSince;
  stateDuring: UnreferencedSince;
}

function decideFiles(
  facts: RepoFacts,
  state: UnreferencedSince,
  before: Set<string>,
  after: Set<string>,
  leftAlone: (path: string) => boolean,
  options: PlanOptions,
): FileDecisions {
  const now = options.nowMs;
  const grace = options.gracePeriodMs;
  const d: FileDecisions = { delete: [], defer: [], stateAfter: new Map(), stateDuring: new Map() };
  const fate = new Map<string, FileAction | 'live'>();
  const sidecars: string[] = [];
  for (const [path, fact] of facts.files) {
    if (after.has(path)) {
      fate.set(path, 'live');
      continue;
    }
    if (leftAlone(path)) {
      fate.set(path, 'live');
      const since = state.get(path);
      if (since !== undefined) for (const kept of [d.stateDuring, d.stateAfter]) kept.set(path, since);
      continue;
    }
    if (isSidecar(baseOf(path))) {
      sidecars.push(path);
      continue;
    }
    // Referenced by the metadata on disk, so fetched by clients until now: whatever the state file says (a prune
    // stopped after writing it, before images.json) is too early.
    const since = before.has(path) ? (options.recordNowMs ?? now) : state.get(path);
    const deletableAtMs = Math.max(changedMs(fact, now), since ?? -Infinity) + grace;
    const action: FileAction = {
      path,
      size: fact.size,
      reason: since === undefined ? 'orphan' : 'unreferenced',
      deletableAtMs,
      seen: fact,
      named: before.has(path),
    };
    fate.set(path, action);
    if (since !== undefined) d.stateDuring.set(path, since);
    if (deletableAtMs <= now) {
      d.delete.push(action);
    } else {
      d.defer.push(action);
      if (since !== undefined) d.stateAfter.set(path, since);
    }
  }

  // Directory-level view for sidecars: what non-sidecar files stay in each directory.
  const dirHasLive = new Set<string>();
  const dirDeferredUntil = new Map<string, number>();
  const dirDeleted = new Set<string>();
  for (const path of after) if (!isSidecar(baseOf(path))) dirHasLive.add(parentOf(path));
  for (const [path, f] of fate) {
    const dir = parentOf(path);
    if (f === 'live') {
      if (!isSidecar(baseOf(path))) dirHasLive.add(dir);
    } else if (f.deletableAtMs <= now) {
      dirDeleted.add(dir);
    } else {
      dirDeferredUntil.set(dir, Math.max(dirDeferredUntil.get(dir) ?? 0, f.deletableAtMs));
    }
  }
  for (const path of sidecars) {
    const fact = facts.files.get(path)!;
    const dir = parentOf(path);
    const base = path.endsWith('.asc') ? path.slice(0, -'.asc'.length) : undefined;
    const followed = base !== undefined && !isSidecar(baseOf(base)) ? fate.get(base) : undefined;
    let deletableAtMs: number | 'live';
    if (followed !== undefined) {
      deletableAtMs = followed === 'live' ? 'live' : followed.deletableAtMs;
    } else if (dirHasLive.has(dir)) {
      deletableAtMs = 'live';
    } else if (dirDeferredUntil.has(dir)) {
      deletableAtMs = dirDeferredUntil.get(dir)!;
    } else {
      deletableAtMs = dirDeleted.has(dir) ? now : changedMs(fact, now) + grace;
    }
    if (deletableAtMs === 'live') continue;
    const action: FileAction = {
      path,
      size: fact.size,
      reason: 'sidecar',
      deletableAtMs,
      seen: fact,
      named: true,
    };
    (deletableAtMs <= now ? d.delete : d.defer).push(action);
  }
  d.delete.sort((a, b) => compareC(a.path, b.path));
  d.defer.sort((a, b) => compareC(a.path, b.path));
  return d;
}

function emptyDirs(
  facts: RepoFacts,
  deleted: Set<string>,
  after: Set<string>,
  leftAlone: (path: string) => boolean,
  options: PlanOptions,
): string[] {
  const nonEmpty = new Set<string>();
  const touched = new Set<string>();
  const markUp = (set: Set<string>, path: string) => {
    for (let dir = parentOf(path); dir !== '' && !set.has(dir); dir = parentOf(dir)) set.add(dir);
  };
  for (const path of facts.files.keys()) markUp(deleted.has(path) ? touched : nonEmpty, path);
  for (const path of [...after, ...facts.foreignDirs]) markUp(nonEmpty, path);
  const deepestFirst = [...facts.dirs.keys()].sort(
    (a, b) => b.split('/').length - a.split('/').length || compareC(a, b),
  );
  const removable: string[] = [];
  for (const dir of deepestFirst) {
    const times = facts.dirs.get(dir)!.times;
    const old =
      times !== undefined && changedMs(times, options.nowMs) + options.gracePeriodMs <= options.nowMs;
    if (!nonEmpty.has(dir) && (touched.has(dir) || old) && !leftAlone(`${dir}/x`)) removable.push(dir);
    else markUp(nonEmpty, `${dir}/x`);
  }
  return removable;
}

export function planPrune(
  catalog: Catalog,
  facts: RepoFacts,
  state: UnreferencedSince,
  options: PlanOptions,
): Plan {
  const selected = productMatcher(options.products);
  const removals: Removals = { products: new Set(), versions: new Map(), items: new Map() };
  const verifyItems: CatalogItem[] = [];
  const products = catalog.products.map((product) => {
    if (selected(product.name)) return planProduct(product, facts, options, removals, verifyItems);
    return emptyProductPlan(product.name, false);
  });
  const before = referencedPaths(catalog, facts);
  const after = referencedPaths(catalog, facts, removals);
  const leftAlone = othersOnly(catalog, selected);
  const files = decideFiles(facts, state, before, after, leftAlone, options);
  const deleted = new Set(files.delete.map((f) => f.path));

  let images: JsonObject | undefined;
  let productNames = catalog.products.map((p) => p.name);
  if (!isEmptyRemovals(removals)) {
    images = applyRemovals(catalog.images.data, removals);
    productNames = productNames.filter((n) => !removals.products.has(n));
  }
  return {
    products,
    unmatchedPatterns: unmatchedPatterns(
      options.products,
      catalog.products.map((p) => p.name),
    ),
    removals,
    images,
    index: rebuildIndex(catalog.index.data, catalog.indexEntry, productNames),
    delete: files.delete,
    defer: files.defer,
    dirsToRemove: emptyDirs(facts, deleted, after, leftAlone, options),
    stateDuring: files.stateDuring,
    stateAfter: files.stateAfter,
    verifyItems,
  };
}
