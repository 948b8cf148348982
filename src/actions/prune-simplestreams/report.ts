/** The JSON report, the job summary and the log lines of a prune: one source (the plan) for all three. */
import { externalText } from '../../core/oci/response.js';
import { formatBytes, heading, markdownTable } from '../../core/summary.js';
import type { ApplyResult } from './apply.js';
import type { PruneInputs } from './inputs.js';
import type { FileReason, Plan, ProductPlan } from './plan.js';
import type { UnmatchedPattern } from './product-filter.js';
import type { VerifyResult } from './verify.js';

export interface PruneReport {
  repository: string;
  dryRun: boolean;
  startedAt: string;
  finishedAt: string;
  options: {
    keepVersions: number;
    maxAgeSeconds?: number;
    gracePeriodSeconds: number;
    products: string[];
    keepBroken: boolean;
  };
  /** When this prune held the repository lock (absent for a dry run, which takes none). */
  lock?: { file: string; acquiredAt: string; releasedAt: string };
  metadata: { imagesJson: MetadataChange; indexJson: MetadataChange };
  products: Omit<ProductPlan, 'selected'>[];
  /** Products the `products` filter left untouched. */
  skippedProducts: string[];
  /** `products` patterns that selected nothing, with close product names. */
  unmatchedPatterns: UnmatchedPattern[];
  files: {
    deleted: { path: string; size: number; reason: FileReason }[];
    deferred: { path: string; size: number; reason: FileReason; deletableAt: string }[];
    dirsRemoved: string[];
    /**
     * Planned removals (files and directories) left alone because they changed since the scan (rewritten,
     * touched, chmod-ed by a sync tool); the next prune judges them again, their age counted from that change.
     */
    leftAlone: string[];
    /**
     * Planned removals the file system refused (a read-only mount, a file of another owner), with why; the others
     * went, and the next prune tries these again. The step fails after the report.
     */
    failed: { path: string; error: string }[];
  };
  totals: { removedVersions: number; removedFiles: number; deferredFiles: number; freedBytes: number };
  verify: VerifyResult | { mode: string; skipped: string };
}

export type MetadataChange = 'unchanged' | 'rewritten' | 'would be rewritten';

export interface ReportContext {
  repository: string;
  inputs: PruneInputs;
  startedMs: number;
  finishedMs: number;
  plan: Plan;
  applied?: ApplyResult;
  lock?: { file: string; acquiredMs: number; releasedMs: number };
  verify: PruneReport['verify'];
}

const iso = (ms: number) => new Date(ms).toISOString();
const MAX_FILE_LINES = 200;

function change(planned: boolean, dryRun: boolean): MetadataChange {
  if (!planned) return 'unchanged';
  return dryRun ? 'would be rewritten' : 'rewritten';
}

export function buildReport(c: ReportContext): PruneReport {
  const { plan, inputs } = c;
  const deleted = c.applied ? c.applied.deleted : plan.delete;
  const selected = plan.products.filter((p) => p.selected);
  return {
    repository: c.repository,
    dryRun: inputs.dryRun,
    startedAt: iso(c.startedMs),
    finishedAt: iso(c.finishedMs),
    options: {
      keepVersions: inputs.keepVersions,
      ...(inputs.maxAgeMs !== undefined ? { maxAgeSeconds: inputs.maxAgeMs / 1000 } : {}),
      gracePeriodSeconds: inputs.gracePeriodMs / 1000,
      products: inputs.products,
      keepBroken: inputs.keepBroken,
    },
    ...(c.lock
      ? {
          lock: { file: c.lock.file, acquiredAt: iso(c.lock.acquiredMs), releasedAt: iso(c.lock.releasedMs) },
        }
      : {}),
    metadata: {
      imagesJson: change(plan.images !== undefined, inputs.dryRun),
      indexJson: change(plan.index !== undefined, inputs.dryRun),
    },
    products: selected.map(({ selected: _selected, ...rest }) => rest),
    skippedProducts: plan.products.filter((p) => !p.selected).map((p) => p.name),
    unmatchedPatterns: plan.unmatchedPatterns,
    files: {
      deleted: deleted.map((f) => ({ path: f.path, size: f.size, reason: f.reason })),
      deferred: plan.defer.map((f) => ({
        path: f.path,
        size: f.size,
        reason: f.reason,
        deletableAt: iso(f.deletableAtMs),
      })),
      dirsRemoved: c.applied ? c.applied.dirsRemoved : plan.dirsToRemove,
      leftAlone: c.applied ? c.applied.changed : [],
      failed: c.applied ? c.applied.failed : [],
    },
    totals: {
      removedVersions: selected.reduce((n, p) => n + p.dropped.length, 0),
      removedFiles: deleted.length,
      deferredFiles: plan.defer.length,
      freedBytes: deleted.reduce((n, f) => n + f.size, 0),
    },
    verify: c.verify,
  };
}

/** The warning for a `products` pattern that selects nothing. */
export function unmatchedMessage(u: UnmatchedPattern, productCount: number): string {
  const hint =
    u.closest.length > 0
      ? `; close product names: ${u.closest.join(', ')}`
      : ` (it has ${productCount} product(s), none with a similar name)`;
  return shown(
    `products: pattern '${u.pattern}' matches no product in images.json, so it selects nothing${hint}`,
  );
}

/** The warning for planned removals apply.ts left alone because they changed since the scan. */
export function changedMessage(paths: readonly string[]): string {
  const more = paths.length > 5 ? `, and ${paths.length - 5} more` : '';
  return shown(
    `left ${paths.length} planned removal(s) alone: the entry or its directory changed since the scan (a ` +
      `publisher that does not take the lock?); the next prune judges them again: ${paths.slice(0, 5).join(', ')}${more}`,
  );
}

/**
 * Names and paths come from images.json: a log line or summary cell must show them as one printable line (no
 * bidi override reordering what is read, no ANSI escape colouring or erasing the log, no line break). Long
 * enough never to cut a line this report builds from names of ordinary length.
 */
const shown = (text: string) => externalText(text, 4000);

/** Text from images.json or the inputs, inside a markdown code span. */
const code = (text: string) => `\`${shown(text).replace(/`/g, ' ')}\``;

function listVersions(versions: readonly string[], max = 3): string {
  if (versions.length === 0) return '';
  const shown = versions.slice(0, max).join(', ');
  return versions.length > max ? `${shown}, +${versions.length - max}` : shown;
}

export function summaryMarkdown(r: PruneReport): string {
  const rows = r.products.map((p) => [
    p.name,
    `${p.kept.length}${p.kept.length ? ` (newest ${p.kept[0]})` : ''}`,
    `${p.dropped.length}${p.dropped.length ? ` (${listVersions(p.dropped.map((d) => d.version))})` : ''}`,
    String(p.broken.length),
    String(p.ignored.length),
    p.removed
      ? 'product removed'
      : p.removedItems.length
        ? `${p.removedItems.length} delta item(s) removed`
        : '',
  ]);
  const verb = r.dryRun ? 'Would delete' : 'Deleted';
  const nextDeletable = r.files.deferred.map((f) => f.deletableAt).sort()[0];
  const lines = [
    `${verb} ${r.totals.removedFiles} file(s), ${formatBytes(r.totals.freedBytes)}; ` +
      `${r.totals.deferredFiles} unreferenced file(s) wait for their grace period` +
      (nextDeletable ? ` (first deletable at ${nextDeletable})` : '') +
      '.',
    `images.json ${r.metadata.imagesJson}, index.json ${r.metadata.indexJson}.`,
  ];
  if (r.files.failed.length > 0) {
    lines.push(
      `Could not remove ${r.files.failed.length} planned file(s) or directories (report-file lists them): ` +
        r.files.failed
          .slice(0, 3)
          .map((f) => `${code(f.path)} (${shown(f.error)})`)
          .join(', ') +
        (r.files.failed.length > 3 ? `, +${r.files.failed.length - 3}` : '') +
        '.',
    );
  }
  if (r.files.leftAlone.length > 0) {
    lines.push(
      `Left ${r.files.leftAlone.length} planned removal(s) alone: changed since the scan ` +
        `(report-file lists them; the next prune judges them again).`,
    );
  }
  for (const u of r.unmatchedPatterns) {
    const hint = u.closest.length ? ` (close names: ${u.closest.map(code).join(', ')})` : '';
    lines.push(`Warning: \`products\` pattern ${code(u.pattern)} matches no product${hint}.`);
  }
  if ('problems' in r.verify && r.verify.problems.length > 0) {
    lines.push(`Verify (${r.verify.mode}) found ${r.verify.problems.length} problem(s).`);
  }
  return (
    heading(
      `prune-simplestreams${r.dryRun ? ' (dry run)' : ''}: ${r.totals.removedVersions} version(s) removed`,
    ) +
    markdownTable(
      ['Product', 'Kept', 'Dropped', 'Broken', 'Ignored', 'Notes'],
      rows.map((row) => row.map(shown)),
    ) +
    `\n${lines.join('\n\n')}\n`
  );
}

/** One line per product with changes, so the log says what will happen before it happens. */
export function planLines(plan: Plan, dryRun: boolean): string[] {
  const lines: string[] = [];
  for (const p of plan.products) {
    if (!p.selected) continue;
    const parts = [`keep ${p.kept.join(', ') || 'nothing'}`];
    if (p.dropped.length) parts.push(`drop ${p.dropped.map((d) => `${d.version} (${d.reason})`).join(', ')}`);
    for (const b of p.broken) parts.push(`broken ${b.version}: ${b.problems.join('; ')}`);
    if (p.ignored.length) parts.push(`untouched non-date versions ${p.ignored.join(', ')}`);
    for (const i of p.removedItems) parts.push(`remove item ${i.version}/${i.item} (${i.reason})`);
    if (p.removed) parts.push('remove the product');
    lines.push(`${p.name}: ${parts.join('; ')}`);
  }
  // Per-file lines are capped: a first prune of a big repository defers thousands of files, and the report
  // file lists them all.
  const verb = dryRun ? 'would delete' : 'delete';
  const files = [
    ...plan.delete.map((f) => `${verb} ${f.path} (${f.reason}, ${formatBytes(f.size)})`),
    ...plan.defer.map((f) => `keep ${f.path} until ${iso(f.deletableAtMs)} (${f.reason}, grace period)`),
  ];
  lines.push(...files.slice(0, MAX_FILE_LINES));
  if (files.length > MAX_FILE_LINES) {
    lines.push(
      `... and ${files.length - MAX_FILE_LINES} more file(s): ${plan.delete.length} to delete and ` +
        `${plan.defer.length} waiting in total (report-file lists every one)`,
    );
  }
  return lines.map(shown);
}
