/**
 * main: find out which disk podman would use, get it (cache, else one download), put it where every later
 * `podman machine init` finds it, and optionally init/start the machine.
 */
import { rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { buildCacheKey, planCacheSave, restoreCache, type RestoreResult } from '../../core/cache.js';
import { writeFileAtomic } from '../../core/atomic.js';
import { exec } from '../../core/exec.js';
import type { Host } from '../../core/host.js';
import { ActionError, errorMessage } from '../../core/run.js';
import { formatBytes, heading, markdownTable } from '../../core/summary.js';
import { stableDir } from '../../core/workspace.js';
import { Outputs, STABLE_DIR_NAME, State } from './constants.js';
import { planContainersConf } from './containers-conf.js';
import { downloadDisk, isUnreachable, resolveDisk, type ResolvedDisk } from './fetch-registry.js';
import { downloadUrl } from './fetch-url.js';
import { digestFile } from '../../core/oci/digest.js';
import { classifyImage, type ImageSource } from './image-source.js';
import {
  commitDownload,
  placeInPodmanCache,
  readRecord,
  storePaths,
  verifyStored,
  type StorePaths,
  type StoredImageRecord,
} from './image-store.js';
import type { PreseedInputs } from './inputs.js';
import { initArgs, startArgs } from './machine-init.js';
import { defaultImageReference, diskTypeFor, podmanCacheFileName } from './machine-os.js';
import {
  detectPodmanVersion,
  machineDirs,
  resolveArch,
  resolveVmType,
  supportsConfOverride,
  type MachineArch,
  type PodmanVersion,
  type VmType,
} from './podman-host.js';

const MACHINE_TIMEOUT_MS = 15 * 60_000;

interface Located {
  path: string;
  digest: string;
  fromCache: boolean;
  size: number;
}

export async function preseedMain(host: Host, inputs: PreseedInputs): Promise<void> {
  const version = await detectPodman();
  const vmType = resolveVmType(inputs.vmType, version);
  const arch = resolveArch(inputs.arch, inputs.init);
  const imageText = inputs.image ?? defaultImageReference(version, vmType);
  const source = classifyImage(imageText);
  host.info(`podman ${version.text}, provider ${vmType}, arch ${arch}, image ${imageText}`);

  const located =
    source.kind === 'file'
      ? await host.group('Checking the local image', async () => ({
          path: source.path,
          digest: await digestFile(source.path),
          fromCache: false,
          size: (await stat(source.path)).size,
        }))
      : await host.group('Getting the machine image', () =>
          locateRemote(host, inputs, source, imageText, vmType, arch),
        );

  host.setOutput(Outputs.imagePath, located.path);
  host.setOutput(Outputs.imageDigest, located.digest);
  host.setOutput(Outputs.cacheHit, located.fromCache ? 'true' : 'false');

  let confPath = '';
  if (inputs.setDefault) confPath = await writeContainersConf(host, version, located.path);
  host.setOutput(Outputs.containersConf, confPath);

  let machine = '';
  if (inputs.init) machine = await initMachine(host, inputs, version, vmType, located.path);
  host.setOutput(Outputs.machineName, machine);

  await host.appendSummary(
    heading('preseed-podman-vm') +
      markdownTable(
        ['image', 'digest', 'size', 'from cache', 'path', 'containers.conf', 'machine'],
        [
          [
            imageText,
            located.digest,
            formatBytes(located.size),
            located.fromCache ? 'yes' : 'no',
            located.path,
            confPath || '-',
            machine || '-',
          ],
        ],
      ),
  );
}

async function detectPodman(): Promise<PodmanVersion> {
  try {
    return await detectPodmanVersion();
  } catch (error) {
    throw new ActionError(`podman is needed to pick the machine image: ${errorMessage(error)}`);
  }
}

function cacheKeyBase(inputs: PreseedInputs, imageText: string, vmType: VmType, arch: MachineArch): string {
  return buildCacheKey({
    prefix: inputs.cacheKeyPrefix,
    arch,
    inputs: { image: imageText, disktype: diskTypeFor(vmType) },
  });
}

/** Registry or URL image: resolve, restore or download once, verify, and place it for podman. */
async function locateRemote(
  host: Host,
  inputs: PreseedInputs,
  source: Exclude<ImageSource, { kind: 'file' }>,
  imageText: string,
  vmType: VmType,
  arch: MachineArch,
): Promise<Located> {
  const paths = storePaths(await stableDir(STABLE_DIR_NAME), source, vmType, arch);
  const cachePaths = [paths.image, paths.record];
  const base = cacheKeyBase(inputs, imageText, vmType, arch);

  let disk: ResolvedDisk | undefined;
  let offlineReason: string | undefined;
  if (source.kind === 'registry') {
    try {
      disk = await resolveDisk(source.reference, arch, vmType);
      host.info(
        `Resolved ${imageText}: disk manifest ${disk.manifestDigest} (${disk.title}, ${formatBytes(disk.layer.size)})`,
      );
    } catch (error) {
      if (!isUnreachable(error)) throw new ActionError(`cannot resolve ${imageText}: ${errorMessage(error)}`);
      offlineReason = errorMessage(error);
      host.warning(
        `The registry of ${imageText} is unreachable (${offlineReason}); looking for a cached image.`,
      );
    }
  }
  // Registry images are keyed by the disk manifest digest; when the registry is unreachable only the newest
  // cached entry for the same image, provider and arch can be used. URLs are keyed by the URL.
  const key = disk ? `${base}-${disk.manifestDigest.slice(7)}` : `${base}-url`;

  let restored: RestoreResult | undefined;
  if (inputs.cache) {
    restored = offlineReason
      ? await restoreCache(host, cachePaths, `${base}-`, [`${base}-`])
      : await restoreCache(host, cachePaths, key);
  }
  if (restored?.matchedKey) {
    const record = await readRecord(paths);
    const check = await verifyStored(paths, record);
    const expected = disk?.manifestDigest;
    if (check.ok && record && (expected === undefined || record.digest === expected)) {
      host.info(`Using the cached image ${paths.image} (${record.digest}), sha256 verified.`);
      await placeForPodman(host, paths.image, record.digest, source, vmType);
      return { path: paths.image, digest: record.digest, fromCache: true, size: record.size };
    }
    const why = check.ok ? `it is ${record?.digest}, not ${expected}` : check.reason;
    if (offlineReason) {
      throw new ActionError(
        `the cached image for ${imageText} is unusable (${why}) and the registry is unreachable (${offlineReason}); it was deleted.`,
      );
    }
    host.warning(`The cached image is unusable (${why}); it was deleted and will be downloaded again.`);
  } else if (offlineReason) {
    throw new ActionError(
      `cannot get ${imageText}: the registry is unreachable (${offlineReason}) and no cached image exists.`,
    );
  }

  const located = await download(host, source, disk, paths);
  if (inputs.cache) planCacheSave(host, { paths: cachePaths, key });
  await placeForPodman(host, paths.image, located.digest, source, vmType);
  return located;
}

async function download(
  host: Host,
  source: Exclude<ImageSource, { kind: 'file' }>,
  disk: ResolvedDisk | undefined,
  paths: StorePaths,
): Promise<Located> {
  const temp = `${paths.image}.partial`;
  await rm(temp, { force: true });
  let record: StoredImageRecord;
  try {
    if (source.kind === 'registry' && disk) {
      const size = await downloadDisk(host, source.reference, disk, temp);
      record = {
        source: `docker://${source.reference}`,
        digest: disk.manifestDigest,
        fileDigest: disk.layer.digest,
        title: disk.title,
        size,
      };
    } else if (source.kind === 'url') {
      const size = await downloadUrl(host, source.url, temp);
      const fileDigest = await digestFile(temp);
      const title = new URL(source.url).pathname.split('/').pop() ?? '';
      record = { source: source.url, digest: fileDigest, fileDigest, title, size };
    } else {
      throw new Error('a registry image must be resolved before it is downloaded');
    }
  } catch (error) {
    await rm(temp, { force: true });
    throw new ActionError(`download failed (nothing was kept): ${errorMessage(error)}`);
  }
  await commitDownload(temp, paths, record);
  host.info(`Stored ${record.title} at ${paths.image} (${formatBytes(record.size)}, ${record.digest})`);
  return { path: paths.image, digest: record.digest, fromCache: false, size: record.size };
}

/** Podman 5 checks its own cache (named by the disk manifest digest) before pulling the default image. */
async function placeForPodman(
  host: Host,
  imagePath: string,
  manifestDigest: string,
  source: ImageSource,
  vmType: VmType,
): Promise<void> {
  if (source.kind !== 'registry') return;
  const target = await placeInPodmanCache(
    imagePath,
    machineDirs(vmType).imageCache,
    podmanCacheFileName(manifestDigest, vmType),
  );
  host.info(`Placed in podman's image cache: ${target}`);
}

async function writeContainersConf(host: Host, version: PodmanVersion, imagePath: string): Promise<string> {
  const confPath = join(await stableDir(STABLE_DIR_NAME), 'containers.conf');
  const plan = await planContainersConf(imagePath, supportsConfOverride(version), confPath);
  // 0644 and owned by the runner user: podman 4 writes its machine connections into the CONTAINERS_CONF file.
  await writeFileAtomic(confPath, plan.text, 0o644);
  host.exportVariable(plan.variable, confPath);
  host.info(
    `Wrote ${confPath} ([machine] image = ${imagePath}${plan.base ? `, other settings from ${plan.base}` : ''}) and exported ${plan.variable}.`,
  );
  return confPath;
}

async function initMachine(
  host: Host,
  inputs: PreseedInputs,
  version: PodmanVersion,
  vmType: VmType,
  imagePath: string,
): Promise<string> {
  const env = { ...process.env, CONTAINERS_MACHINE_PROVIDER: vmType };
  const args = initArgs(version, {
    name: inputs.machineName,
    imagePath,
    cpus: inputs.cpus,
    memoryMiB: inputs.memoryMiB,
    diskSizeGiB: inputs.diskSizeGiB,
    rootful: inputs.rootful,
  });
  return host.group(`podman ${args.join(' ')}`, async () => {
    host.saveState(State.provider, vmType);
    if (inputs.cleanup) host.saveState(State.createdMachine, inputs.machineName);
    const onLine = (line: string) => host.info(line);
    await exec('podman', args, { timeoutMs: MACHINE_TIMEOUT_MS, env, onLine });
    if (inputs.start)
      await exec('podman', startArgs(inputs.machineName), { timeoutMs: MACHINE_TIMEOUT_MS, env, onLine });
    return inputs.machineName;
  });
}
