/**
 * The release push: read (or export) the source once, find what is attached to it, then push it everywhere in
 * two phases. Phase 1 puts every blob and every manifest by digest on every destination (registries in
 * parallel, repositories of one registry in turn so the later ones mount what the first one uploaded). Phase 2
 * moves the tags — with `atomic` (the default) only once phase 1 succeeded everywhere, so a release lands on
 * every registry or moves no tag at all. Outputs and the job summary are written on every outcome, before the
 * error (if any) reaches the one error boundary.
 */
import { access, writeFile } from 'node:fs/promises';
import { maskCredential } from './auth-files.js';
import type { Host } from '../../core/host.js';
import { InputError } from '../../core/inputs.js';
import { RegistryClient } from '../../core/oci/client.js';
import type { LocalImage } from '../../core/oci/layout.js';
import { parseReference } from '../../core/oci/reference.js';
import { externalText } from '../../core/oci/response.js';
import { formatImageSource } from './source.js';
import { ActionError } from '../../core/run.js';
import { formatBytes, formatDuration } from '../../core/summary.js';
import { removeScratchDirs, scratchDir } from '../../core/workspace.js';
import { NO_ATTACHMENTS, pushContent, type Attachments, type PushContent } from './content.js';
import { failureOf, type Failure } from './failure.js';
import { EXPORT_TIMEOUT_MS, Inputs, Outputs, REQUEST_TIMEOUT_MS } from './constants.js';
import { readImageSource } from './image-source.js';
import { type Destination, type PushInputs } from './inputs.js';
import {
  inspect,
  moveTags,
  storeByDigest,
  type RefOutcome,
  type StoreResult,
  type Target,
  type TagResult,
} from './phases.js';
import { planJson, planLines, planRepository, type RepositoryPlan } from './plan.js';
import { attachmentsInLayout, attachmentsInRegistry } from './referrers.js';
import { preparePushAccess, type PushAccess, type RegistryAccess } from './registry-access.js';
import { pushSummary } from './summary.js';

/** What happened to one repository. */
export interface RepositoryOutcome {
  registry: string;
  repository: string;
  plan?: RepositoryPlan;
  stored?: StoreResult;
  tagged?: TagResult;
}

/** What talking to one registry cost, retries included (for the log and the job summary). */
export interface RegistryTraffic {
  registry: string;
  requests: number;
  retries: number;
  bytesUploaded: number;
}

export interface PushOutcome {
  digest: string;
  dryRun: boolean;
  repositories: RepositoryOutcome[];
  traffic: RegistryTraffic[];
  /** Registries whose lookups or phase 1 failed, with the reason. */
  phase1Failures: Map<string, Failure>;
  /** Refs with their before/after digests and, where they failed, why. */
  refs: RefOutcome[];
  phase1Ms: number;
  phase2Ms: number;
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
    throw new InputError(Inputs.source, `${inputs.source.location} does not exist.`);
  }
}

export async function pushMultiTag(host: Host, inputs: PushInputs): Promise<void> {
  // Mask before anything else can print it.
  if (inputs.password) maskCredential(host, { username: inputs.username ?? '', password: inputs.password });
  const started = Date.now();
  await checkSourceExists(inputs);
  let access: PushAccess | undefined;
  try {
    access = await preparePushAccess(host, inputs);
    const { source, sourceRegistry, destinations } = access;
    const scratch = await scratchDir(host);
    const image = await host.group(`Read ${formatImageSource(inputs.source)}`, () =>
      readImageSource(inputs.source, {
        scratch,
        compression: inputs.compression,
        ...source,
        timeoutMs: EXPORT_TIMEOUT_MS,
        log: (line) => host.info(line),
        debug: (line) => host.debug(line),
      }),
    );
    const attached = inputs.referrers
      ? await host.group('Find referrers and signatures', () =>
          findAttachments(host, inputs, image, scratch, sourceRegistry),
        )
      : NO_ATTACHMENTS;
    const content = pushContent(image, attached);
    const totalBytes = content.blobs.reduce((n, b) => n + b.size, 0);
    host.info(
      `${inputs.dryRun ? 'Dry run: would push' : 'Pushing'} ${content.root.digest} (${content.manifests.length} ` +
        `manifest(s), ${content.blobs.length} blobs, ${formatBytes(totalBytes)}) to ${inputs.repositories.length} ` +
        `repositories × ${inputs.tags.length} tags: ${inputs.tags.join(', ')}`,
    );
    const outcome = await host.group(inputs.dryRun ? 'Plan (dry run: nothing is changed)' : 'Push', () =>
      pushEverywhere(host, inputs, content, destinations, scratch),
    );
    const durationMs = Date.now() - started;
    report(host, inputs, outcome, durationMs);
    await host.appendSummary(pushSummary(outcome, inputs, durationMs, image.engineImageId));
    const failed = outcome.refs.filter((r) => r.failure);
    if (outcome.phase1Failures.size > 0 || failed.length > 0)
      throw new ActionError(failureText(inputs, outcome));
    if (inputs.digestFile && !inputs.dryRun) await writeFile(inputs.digestFile, `${content.root.digest}\n`);
  } finally {
    await access?.release();
    await removeScratchDirs(host);
  }
}

async function findAttachments(
  host: Host,
  inputs: PushInputs,
  image: LocalImage,
  scratch: string,
  sourceRegistry: RegistryAccess | undefined,
): Promise<Attachments> {
  // The image first, then its children: the order the plan and the summary list their referrers in.
  const subjects = [image.root, ...image.manifests.filter((m) => m !== image.root)].map((m) => m.digest);
  const known = new Set(image.blobs.map((b) => b.digest));
  let found: Attachments;
  if (inputs.source.transport === 'docker') {
    const ref = parseReference(inputs.source.location);
    const client = new RegistryClient({
      registry: ref.registry,
      ...sourceRegistry,
      onToken: (token) => host.setSecret(token),
      onServerWait: (line) => host.info(line),
      timeoutMs: REQUEST_TIMEOUT_MS,
    });
    try {
      found = await attachmentsInRegistry({ client, repository: ref.repository, scratch }, subjects, known);
    } finally {
      await client.close();
    }
  } else if (inputs.source.transport === 'oci' || inputs.source.transport === 'oci-archive') {
    found = await attachmentsInLayout(image.dir, subjects, known);
  } else {
    return NO_ATTACHMENTS;
  }
  host.info(
    `Attached to ${image.root.digest}: ${found.referrers.length} referrer(s)` +
      found.referrers
        .map(
          (r) =>
            `\n  ${externalText(r.descriptor.artifactType ?? r.descriptor.mediaType, 100)} ${r.descriptor.digest}`,
        )
        .join('') +
      `; ${found.artifactTags.length} cosign tag(s)${found.artifactTags.map((a) => `\n  ${a.tag}`).join('')}`,
  );
  return found;
}

/** One registry's part of the push: its client, its repositories, and how far it got. */
class RegistryRun {
  readonly client: RegistryClient;
  readonly targets: Target[];
  readonly outcomes: RepositoryOutcome[];
  failure?: Failure;

  constructor(
    readonly registry: string,
    repositories: readonly string[],
    private readonly host: Host,
    private readonly inputs: PushInputs,
    private readonly content: PushContent,
    access: RegistryAccess | undefined,
    origin: { registry: string; repository: string } | undefined,
    scratch: string,
  ) {
    this.client = new RegistryClient({
      registry,
      ...access,
      onToken: (token) => host.setSecret(token),
      onServerWait: (line) => host.info(line),
      onLostAnswer: (line) => host.info(line),
      timeoutMs: REQUEST_TIMEOUT_MS,
    });
    // The first repository mounts from the source repository when it is on this registry; the others from
    // the first one, which holds every blob by the time they run.
    this.targets = repositories.map((repository, i) => ({
      registry,
      repository,
      client: this.client,
      mountFrom: i > 0 ? repositories[0] : origin?.registry === registry ? origin.repository : undefined,
      scratch,
    }));
    this.outcomes = repositories.map((repository) => ({ registry, repository }));
  }

  /** Lookups for every repository at once, then (unless dry run) phase 1 repository by repository. */
  async storeByDigest(): Promise<boolean> {
    try {
      // Settled, not raced: nothing may still be asking when the client closes.
      const looked = await Promise.allSettled(
        this.targets.map((t) => inspect(t, this.content, this.inputs.tags)),
      );
      const seen = looked.map((l) => {
        if (l.status === 'rejected') throw l.reason;
        return l.value;
      });
      this.targets.forEach((t, i) => {
        this.outcomes[i]!.plan = planRepository(t, this.content, this.inputs.tags, seen[i]!);
      });
      for (const outcome of this.outcomes) this.host.info(planLines(outcome.plan!).join('\n'));
      if (this.inputs.dryRun) return true;
      for (const [i, target] of this.targets.entries()) {
        const outcome = this.outcomes[i]!;
        outcome.stored = await storeByDigest(target, this.content, outcome.plan!, this.inputs);
        const s = outcome.stored;
        this.host.info(
          `${this.registry}/${target.repository}: phase 1 done: ${s.uploaded} uploaded (${formatBytes(s.bytesUploaded)}), ` +
            `${s.mounted} mounted, ${s.skipped} already there` +
            `${s.mountRefused ? ` (mounting from ${target.mountFrom} was refused: uploaded instead)` : ''}.`,
        );
      }
      return true;
    } catch (error) {
      this.failure = failureOf(error);
      this.host.info(`${this.registry}: phase 1 failed: ${this.failure.detail}`);
      return false;
    }
  }

  async moveTags(): Promise<void> {
    await Promise.all(
      this.targets.map(async (target, i) => {
        const outcome = this.outcomes[i]!;
        const plan = outcome.plan!;
        outcome.tagged = await moveTags(target, this.content, plan, {
          maintainFallback:
            plan.fallback.length > 0 && (!plan.referrersApi || outcome.stored!.subjectIgnored),
        });
        const failed = outcome.tagged.outcomes.filter((o) => o.failure).length;
        const t = outcome.tagged;
        this.host.info(
          `${this.registry}/${target.repository}: phase 2 done: ${t.outcomes.length - failed} ref(s) set` +
            (failed ? `, ${failed} failed` : '') +
            (t.multiTag
              ? ` (release tags in ${t.tagRequests === 1 ? 'one request' : `${t.tagRequests} requests`})`
              : ''),
        );
      }),
    );
  }

  /** Every ref of this registry as not moved: its own phase 1 failed, or (atomic) another registry's did. */
  blockedRefs(elsewhere?: string): RefOutcome[] {
    const failure = this.failure
      ? { detail: this.failure.detail, reason: `phase 1 failed here: ${this.failure.reason}` }
      : { detail: elsewhere!, reason: elsewhere! };
    return this.outcomes.flatMap((o) =>
      (
        o.plan?.tags ??
        this.inputs.tags.map((tag) => ({ tag, before: undefined, after: this.content.root.digest }))
      ).map((m) => ({
        ref: `${this.registry}/${o.repository}:${m.tag}`,
        ...m,
        release: this.inputs.tags.includes(m.tag),
        failure,
      })),
    );
  }

  async close(): Promise<RegistryTraffic> {
    // Logged on failure too: "6 requests, 5 retried" is the first thing to read when a push gives up.
    const { requests, retries, bytesUploaded } = this.client.stats;
    this.host.info(
      `${this.registry}: ${requests} requests, ${retries} retried, ${formatBytes(bytesUploaded)} of blobs sent.`,
    );
    await this.client.close();
    return { registry: this.registry, requests, retries, bytesUploaded };
  }
}

async function pushEverywhere(
  host: Host,
  inputs: PushInputs,
  content: PushContent,
  access: Map<string, RegistryAccess>,
  scratch: string,
): Promise<PushOutcome> {
  const origin = inputs.source.transport === 'docker' ? parseReference(inputs.source.location) : undefined;
  const runs = [...groupByRegistry(inputs.repositories)].map(
    ([registry, repositories]) =>
      new RegistryRun(registry, repositories, host, inputs, content, access.get(registry), origin, scratch),
  );
  const started = Date.now();
  let phase1Ms = 0;
  let phase2Ms = 0;
  const refs: RefOutcome[] = [];
  let traffic: RegistryTraffic[] = [];
  try {
    const phase1 = runs.map((r) => r.storeByDigest());
    if (inputs.atomic || inputs.dryRun) {
      const ok = await Promise.all(phase1);
      phase1Ms = Date.now() - started;
      if (!inputs.dryRun) {
        if (ok.every(Boolean)) {
          host.info(
            `Phase 1 (blobs and manifests by digest) done everywhere in ${formatDuration(phase1Ms)}; moving tags.`,
          );
          await Promise.all(runs.map((r) => r.moveTags()));
          phase2Ms = Date.now() - started - phase1Ms;
        } else {
          const failed = runs.filter((r) => r.failure).map((r) => r.registry);
          host.info(`Phase 1 failed on ${failed.join(', ')}: no tag moves on any registry (atomic).`);
          for (const run of runs) {
            refs.push(
              ...run.blockedRefs(
                `not tagged: phase 1 failed on ${failed.join(', ')} (atomic: no tag moves anywhere)`,
              ),
            );
          }
        }
      }
    } else {
      // Each registry on its own, for mirrors that may lag: its tags move as soon as its own phase 1 is done.
      // The phase times reported are the longest of any registry.
      await Promise.all(
        runs.map(async (run, i) => {
          const ok = await phase1[i]!;
          const own1 = Date.now() - started;
          phase1Ms = Math.max(phase1Ms, own1);
          if (!ok) {
            refs.push(...run.blockedRefs());
            return;
          }
          await run.moveTags();
          phase2Ms = Math.max(phase2Ms, Date.now() - started - own1);
        }),
      );
    }
  } finally {
    traffic = await Promise.all(runs.map((r) => r.close()));
  }
  if (!inputs.dryRun) {
    host.info(`Phase 1 took ${formatDuration(phase1Ms)}, phase 2 ${formatDuration(phase2Ms)}.`);
  }
  const repositories = runs.flatMap((r) => r.outcomes);
  refs.unshift(...repositories.flatMap((o) => o.tagged?.outcomes ?? []));
  return {
    digest: content.root.digest,
    dryRun: inputs.dryRun,
    repositories,
    traffic,
    phase1Failures: new Map(runs.filter((r) => r.failure).map((r) => [r.registry, r.failure!])),
    refs,
    phase1Ms,
    phase2Ms,
  };
}

function failureText(inputs: PushInputs, outcome: PushOutcome): string {
  const lines: string[] = [];
  if (outcome.phase1Failures.size > 0) {
    lines.push(
      `phase 1 (blobs and manifests by digest) failed on ${outcome.phase1Failures.size} registr` +
        `${outcome.phase1Failures.size === 1 ? 'y' : 'ies'}` +
        (inputs.atomic ? '; no tag was moved on any registry:' : '; the tags of the others were moved:'),
    );
    for (const [registry, why] of outcome.phase1Failures) lines.push(`${registry}: ${why.detail}`);
  }
  const failedTags = outcome.refs.filter(
    (r) => r.failure && !outcome.phase1Failures.has(r.ref.split('/')[0]!),
  );
  if (failedTags.length > 0 && !(inputs.atomic && outcome.phase1Failures.size > 0)) {
    lines.push(`phase 2 could not set ${failedTags.length} ref(s):`);
    for (const r of failedTags) lines.push(`${r.ref}: ${r.failure!.detail}`);
  }
  return `push failed: ${lines.join('\n')}`;
}

function report(host: Host, inputs: PushInputs, outcome: PushOutcome, durationMs: number): void {
  const pushed = outcome.refs.filter((r) => r.release && !r.failure).map((r) => `${r.ref}@${r.after}`);
  const failed = outcome.refs
    .filter((r) => r.failure)
    .map((r) => ({ ref: r.ref, reason: r.failure!.reason }));
  const stored = outcome.repositories.flatMap((r) => (r.stored ? [r.stored] : []));
  const sum = (key: 'uploaded' | 'mounted' | 'skipped' | 'bytesUploaded') =>
    String(stored.reduce((n, s) => n + s[key], 0));
  host.setOutput(Outputs.digest, outcome.digest);
  host.setOutput(Outputs.pushedRefs, JSON.stringify(pushed));
  host.setOutput(Outputs.failedRefs, JSON.stringify(failed));
  host.setOutput(
    Outputs.plan,
    JSON.stringify(planJson(outcome.repositories.flatMap((r) => (r.plan ? [r.plan] : [])))),
  );
  host.setOutput(Outputs.bytesUploaded, sum('bytesUploaded'));
  host.setOutput(Outputs.blobsUploaded, sum('uploaded'));
  host.setOutput(Outputs.blobsMounted, sum('mounted'));
  host.setOutput(Outputs.blobsSkipped, sum('skipped'));
  host.setOutput(Outputs.durationMs, String(durationMs));
  if (inputs.dryRun) host.info(`Dry run: nothing was changed (${formatDuration(durationMs)}).`);
  else host.info(`Tagged ${pushed.length} refs, ${failed.length} failed, in ${formatDuration(durationMs)}.`);
}
