/** The job summary of a push, written on every outcome: what each repository got, how each tag moved, why refs failed. */
import { formatBytes, formatDuration, heading, markdownTable } from '../../core/summary.js';
import type { PushInputs } from './inputs.js';
import type { PushOutcome } from './main.js';
import { blobCounts, shortDigest } from './plan.js';
import { formatImageSource } from './source.js';

function title(outcome: PushOutcome, inputs: PushInputs, durationMs: number): string {
  const n = outcome.repositories.length;
  if (outcome.dryRun) return `push-multi-tag (dry run, nothing changed): plan for ${n} repositories`;
  const failed = outcome.refs.filter((r) => r.failure).length;
  const state =
    outcome.phase1Failures.size > 0
      ? `phase 1 failed on ${[...outcome.phase1Failures.keys()].join(', ')}${inputs.atomic ? ', no tag moved anywhere' : ''}`
      : failed > 0
        ? `${failed} ref(s) failed`
        : 'done';
  return `push-multi-tag: ${n} repositories in ${formatDuration(durationMs)}: ${state}`;
}

/** `engineImageId`: the Docker engine's ID of a docker-daemon source, to match against the build's output. */
export function pushSummary(
  outcome: PushOutcome,
  inputs: PushInputs,
  durationMs: number,
  engineImageId?: string,
): string {
  const dry = outcome.dryRun;
  const repositoryRows = outcome.repositories.map((r) => {
    const name = `${r.registry}/${r.repository}:${inputs.tags.join(', ')}`;
    if (r.stored) {
      const s = r.stored;
      return [
        name,
        `\`${outcome.digest}\``,
        `${s.uploaded} (${formatBytes(s.bytesUploaded)})`,
        String(s.mounted),
        String(s.skipped),
      ];
    }
    if (dry && r.plan) {
      const c = blobCounts(r.plan);
      return [
        name,
        `\`${outcome.digest}\``,
        `would upload ${c.upload.count} (${formatBytes(c.upload.bytes)})`,
        `would mount ${c.mount.count}`,
        String(c.skip.count),
      ];
    }
    return [name, `\`${outcome.digest}\``, '-', '-', '-'];
  });
  const tagRows = outcome.refs.length
    ? outcome.refs.map((r) => [
        r.ref,
        r.before ? `\`${shortDigest(r.before)}\`` : '(new)',
        r.after ? `\`${shortDigest(r.after)}\`` : '-',
        r.failure ? `failed: ${r.failure.reason}` : r.before === r.after ? 'unchanged' : 'moved',
      ])
    : outcome.repositories.flatMap((r) =>
        (r.plan?.tags ?? []).map((m) => [
          `${r.registry}/${r.repository}:${m.tag}`,
          m.before ? `\`${shortDigest(m.before)}\`` : '(new)',
          `\`${shortDigest(m.after)}\``,
          m.before === m.after ? 'unchanged' : 'would move',
        ]),
      );
  const failures = [...outcome.phase1Failures].map(([registry, why]) => [registry, why.reason]);
  return (
    heading(title(outcome, inputs, durationMs)) +
    (engineImageId
      ? `Source: \`${formatImageSource(inputs.source)}\`, the Docker engine's image \`${engineImageId}\`.\n\n`
      : '') +
    markdownTable(['Ref', 'Digest', 'Uploaded', 'Mounted', 'Skipped'], repositoryRows) +
    '\n' +
    markdownTable(['Tag', 'Before', 'After', 'Result'], tagRows) +
    (failures.length ? '\n' + markdownTable(['Registry', 'Phase 1 failure'], failures) : '') +
    '\n' +
    markdownTable(
      ['Registry', 'Requests', 'Retries', 'Blob bytes sent'],
      outcome.traffic.map((t) => [
        t.registry,
        String(t.requests),
        String(t.retries),
        formatBytes(t.bytesUploaded),
      ]),
    ) +
    (dry
      ? ''
      : `\nPhase 1 (by digest): ${formatDuration(outcome.phase1Ms)}; phase 2 (tags): ${formatDuration(outcome.phase2Ms)}.\n`)
  );
}
