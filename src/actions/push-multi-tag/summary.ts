import { formatBytes, formatDuration, heading, markdownTable } from '../../core/summary.js';
import type { PushedRepository, RegistryTraffic } from './main.js';

export function pushSummary(
  pushed: readonly PushedRepository[],
  traffic: readonly RegistryTraffic[],
  durationMs: number,
): string {
  const rows = pushed.map((p) => [
    `${p.registry}/${p.repository}:${p.tags.join(', ')}`,
    `\`${p.digest}\``,
    `${p.uploaded} (${formatBytes(p.bytesUploaded)})`,
    String(p.mounted),
    String(p.skipped),
  ]);
  return (
    heading(`push-multi-tag: ${pushed.length} repositories in ${formatDuration(durationMs)}`) +
    markdownTable(['Ref', 'Digest', 'Uploaded', 'Mounted', 'Skipped'], rows) +
    '\n' +
    markdownTable(
      ['Registry', 'Requests', 'Retries', 'Blob bytes sent'],
      traffic.map((t) => [t.registry, String(t.requests), String(t.retries), formatBytes(t.bytesUploaded)]),
    )
  );
}
