/**
 * The release push: read (or export) the source once, then push it to every repository — registries in
 * parallel, repositories of one registry in turn so the later ones mount what the first one uploaded.
 */
import { access, writeFile } from 'node:fs/promises';
import type { Host } from '../../core/host.js';
import { InputError } from '../../core/inputs.js';
import { RegistryClient } from '../../core/oci/client.js';
import type { LocalImage } from '../../core/oci/layout.js';
import { pushToRepository, type RepositoryPushResult } from '../../core/oci/push.js';
import { parseReference } from '../../core/oci/reference.js';
import { formatImageSource } from '../../core/oci/source.js';
import { ActionError, errorMessage } from '../../core/run.js';
import { formatBytes, formatDuration } from '../../core/summary.js';
import { removeScratchDirs, scratchDir } from '../../core/workspace.js';
import { EXPORT_TIMEOUT_MS, Output, REQUEST_TIMEOUT_MS } from './constants.js';
import { Input, type Destination, type PushInputs } from './inputs.js';
import { readImageSource } from './image-source.js';
import { preparePushAccess, type PushAccess, type RegistryAccess } from './registry-access.js';
import { pushSummary } from './summary.js';

export interface PushedRepository extends RepositoryPushResult {
  registry: string;
}

/** What talking to one registry cost, retries included (for the log and the job summary). */
export interface RegistryTraffic {
  registry: string;
  requests: number;
  retries: number;
  bytesUploaded: number;
}

function groupByRegistry(destinations: readonly Destination[]): Map<string, string[]> {
  const groups = new Map<string, string[]>();
  for (const d of destinations) groups.set(d.registry, [...(groups.get(d.registry) ?? []), d.repository]);
  return groups;
}

async function checkSourceExists(inputs: PushInputs): Promise<void> {
  if (['containers-storage', 'docker', 'docker-daemon'].includes(inputs.source.transport)) return;
  try {
    await access(inputs.source.location);
  } catch {
    throw new InputError(Input.source, `${inputs.source.location} does not exist.`);
  }
}

export async function pushMultiTag(host: Host, inputs: PushInputs): Promise<void> {
  // Mask before anything else can print it.
  if (inputs.password) host.setSecret(inputs.password);
  const started = Date.now();
  await checkSourceExists(inputs);
  let access: PushAccess | undefined;
  try {
    access = await preparePushAccess(host, inputs);
    const scratch = await scratchDir(host);
    const image = await host.group(`Read ${formatImageSource(inputs.source)}`, () =>
      readImageSource(inputs.source, {
        scratch,
        compression: inputs.compression,
        ...access!.source,
        timeoutMs: EXPORT_TIMEOUT_MS,
        log: (line) => host.info(line),
        debug: (line) => host.debug(line),
      }),
    );
    const totalBytes = image.blobs.reduce((n, b) => n + b.size, 0);
    host.info(
      `Pushing ${image.root.digest} (${image.manifests.length} manifest(s), ${image.blobs.length} blobs, ` +
        `${formatBytes(totalBytes)}) to ${inputs.repositories.length} repositories × ${inputs.tags.length} tags: ` +
        inputs.tags.join(', '),
    );
    const { pushed, traffic } = await host.group('Push', () =>
      pushEverywhere(host, inputs, image, access!.destinations),
    );
    const durationMs = Date.now() - started;
    report(host, inputs, image, pushed, durationMs);
    await host.appendSummary(pushSummary(pushed, traffic, durationMs));
    if (inputs.digestFile) await writeFile(inputs.digestFile, `${image.root.digest}\n`);
  } finally {
    await access?.release();
    await removeScratchDirs(host);
  }
}

async function pushEverywhere(
  host: Host,
  inputs: PushInputs,
  image: LocalImage,
  access: Map<string, RegistryAccess>,
): Promise<{ pushed: PushedRepository[]; traffic: RegistryTraffic[] }> {
  const groups = groupByRegistry(inputs.repositories);
  // Registry to registry on the same host: the source repository already holds every blob, so mount from it.
  const origin = inputs.source.transport === 'docker' ? parseReference(inputs.source.location) : undefined;
  const traffic: RegistryTraffic[] = [];
  const perRegistry = await Promise.allSettled(
    [...groups].map(async ([registry, repositories]) => {
      const client = new RegistryClient({
        registry,
        ...access.get(registry),
        onToken: (token) => host.setSecret(token),
        timeoutMs: REQUEST_TIMEOUT_MS,
      });
      const results: PushedRepository[] = [];
      try {
        for (const repository of repositories) {
          const result = await pushToRepository(client, repository, image, {
            tags: inputs.tags,
            concurrency: inputs.concurrency,
            chunkSize: inputs.chunkSize,
            mountFrom:
              results[0]?.repository ?? (origin?.registry === registry ? origin.repository : undefined),
          });
          host.info(
            `${registry}/${repository}: ${result.uploaded} uploaded (${formatBytes(result.bytesUploaded)}), ` +
              `${result.mounted} mounted, ${result.skipped} already there; tagged ${inputs.tags.length}` +
              (result.multiTag
                ? ` in ${result.tagRequests === 1 ? 'one request' : `${result.tagRequests} requests`}`
                : ''),
          );
          results.push({ registry, ...result });
        }
      } finally {
        // Logged on failure too: "6 requests, 5 retried" is the first thing to read when a push gives up.
        const { requests, retries, bytesUploaded } = client.stats;
        host.info(
          `${registry}: ${requests} requests, ${retries} retried, ${formatBytes(bytesUploaded)} of blobs sent.`,
        );
        traffic.push({ registry, requests, retries, bytesUploaded });
        await client.close();
      }
      return results;
    }),
  );
  const failures = perRegistry.flatMap((r, i) =>
    r.status === 'rejected' ? [`${[...groups.keys()][i]}: ${errorMessage(r.reason)}`] : [],
  );
  if (failures.length > 0) throw new ActionError(`push failed:\n${failures.join('\n')}`);
  const pushed = perRegistry.flatMap((r) => (r.status === 'fulfilled' ? r.value : []));
  return { pushed, traffic: [...groups.keys()].map((g) => traffic.find((t) => t.registry === g)!) };
}

function report(
  host: Host,
  inputs: PushInputs,
  image: LocalImage,
  pushed: readonly PushedRepository[],
  durationMs: number,
): void {
  const digest = image.root.digest;
  const refs = pushed.flatMap((p) => inputs.tags.map((t) => `${p.registry}/${p.repository}:${t}@${digest}`));
  const sum = (key: 'uploaded' | 'mounted' | 'skipped' | 'bytesUploaded') =>
    String(pushed.reduce((n, p) => n + p[key], 0));
  host.setOutput(Output.digest, digest);
  host.setOutput(Output.pushedRefs, JSON.stringify(refs));
  host.setOutput(Output.bytesUploaded, sum('bytesUploaded'));
  host.setOutput(Output.blobsUploaded, sum('uploaded'));
  host.setOutput(Output.blobsMounted, sum('mounted'));
  host.setOutput(Output.blobsSkipped, sum('skipped'));
  host.setOutput(Output.durationMs, String(durationMs));
  host.info(`Pushed ${refs.length} refs in ${formatDuration(durationMs)}.`);
}
