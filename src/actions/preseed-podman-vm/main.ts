/**
 * main: find out which disk podman would use, get it (cache, else one download), put it where every later
 * `podman machine init` finds it, and optionally init/start the machine.
 */
import { rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { planCacheSave, restoreCache, type RestoreResult } from '../../core/cache.js';
import { buildCacheKey } from '../../core/cache-key.js';
import { writeFileAtomic } from '../../core/atomic.js';
import { exec } from '../../core/exec.js';
import type { Host } from '../../core/host.js';
import { InputError } from '../../core/inputs.js';
import { containersConfVariable, podmanVersion, type PodmanVersion } from '../../core/podman.js';
import { ActionError, errorMessage } from '../../core/run.js';
import { formatBytes, heading, markdownTable } from '../../core/summary.js';
import { scratchDir, stableDir } from '../../core/workspace.js';
import { MACHINE_STAGE_DIR, Outputs, STABLE_DIR_NAME } from './constants.js';
import { planContainersConf } from './containers-conf.js';
import { isPlainFileName, resolveFcosDisk, StreamUnreachable, withoutCredentials } from './fcos-stream.js';
import { downloadDisk, isUnreachable, resolveDisk } from './fetch-registry.js';
import { downloadSizeLimit, downloadUrl } from './fetch-url.js';
import { digestFile } from '../../core/oci/digest.js';
import { externalText } from '../../core/oci/response.js';
import { classifyImage, imageUrlSecrets, shownImageText, type ImageSource } from './image-source.js';
import {
  commitDownload,
  placeInPodmanCache,
  readRecord,
  removeStored,
  storePaths,
  verifyStored,
  type StorePaths,
  type StoredImageRecord,
} from './image-store.js';
import type { PreseedInputs } from './inputs.js';
import { restoreMachine, stageMachine } from './machine-cache.js';
import { initArgs, startArgs } from './machine-init.js';
import {
  defaultImage,
  diskTypeFor,
  digestHex,
  isPodmanCachedDisk,
  podmanCacheFileName,
} from './machine-os.js';
import {
  isHostArch,
  machineDirs,
  PROVIDER_ENV,
  resolveArch,
  resolveVmType,
  type MachineArch,
  type VmType,
} from './podman-host.js';
import { saveRunState, type PreseedState } from './state.js';

const MACHINE_TIMEOUT_MS = 15 * 60_000;
const INSPECT_TIMEOUT_MS = 60_000;

interface Located {
  path: string;
  digest: string;
  fromCache: boolean;
  size: number;
}

export async function main(host: Host, inputs: PreseedInputs): Promise<void> {
  const version = await detectPodman();
  const vmType = resolveVmType(inputs.vmType, version);
  const arch = resolveArch(inputs.arch, inputs.init);
  const imageText = inputs.image ?? defaultImage(version, vmType);
  const source = classifyImage(imageText);
  for (const secret of imageUrlSecrets(source, imageText)) host.setSecret(secret);
  host.info(`podman ${version.text}, provider ${vmType}, arch ${arch}, image ${imageText}`);

  // Read before anything is fetched: a mistake in it is an input error on a warm run too.
  const maxBytes = downloadSizeLimit();
  if (source.kind === 'file' && inputs.cache) {
    host.info(`The image is a local file (${source.path}): there is nothing to cache for it.`);
  }
  const located =
    source.kind === 'file'
      ? await host.group('Checking the local image', async () => ({
          path: source.path,
          digest: await digestFile(source.path),
          fromCache: false,
          size: (await stat(source.path)).size,
        }))
      : await host.group('Getting the machine image', () =>
          locateRemote(host, inputs, source, shownImageText(source, imageText), vmType, arch, maxBytes),
        );

  host.setOutput(Outputs.imagePath, located.path);
  host.setOutput(Outputs.imageDigest, located.digest);
  host.setOutput(Outputs.cacheHit, located.fromCache ? 'true' : 'false');

  let confPath = '';
  if (inputs.setDefault && !isHostArch(arch)) {
    // Podman only inits machines of the host's arch: a conf naming this disk would hand it to every later init.
    host.info(
      `Not exporting a containers.conf: the ${arch} disk is a prefetch; podman here inits ${process.arch} machines only. The disk is at ${located.path} (output image-path).`,
    );
  } else if (inputs.setDefault) {
    confPath = await writeContainersConf(host, version, located.path);
  }
  host.setOutput(Outputs.containersConf, confPath);

  let machine = '';
  let machineFromCache = false;
  if (inputs.init) {
    machine = inputs.machineName;
    const state: PreseedState = {};
    if (inputs.cache && inputs.cacheScope === 'machine') {
      machineFromCache = await restoreOrInitMachine(host, inputs, state, version, vmType, arch, located);
    } else {
      await refuseExistingMachine(inputs.machineName, vmType);
      markCreated(host, inputs, state, vmType);
      await initMachine(host, inputs, version, vmType, located.path);
    }
    if (inputs.start) await startMachine(host, inputs.machineName, vmType);
  }
  host.setOutput(Outputs.machineName, machine);
  host.setOutput(Outputs.machineCacheHit, machineFromCache ? 'true' : 'false');

  await host.appendSummary(
    heading('preseed-podman-vm') +
      markdownTable(
        ['image', 'digest', 'size', 'from cache', 'path', 'containers.conf', 'machine'],
        [
          [
            // The summary is a file the runner keeps beside the log: a URL's `user:password@` stays out of it.
            shownImageText(source, imageText),
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
    return await podmanVersion();
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

/**
 * What a remote image resolved to before anything big is fetched: the digest that keys the cache entry (the
 * disk manifest for registry images, the published sha256 for Fedora CoreOS) and how to download it.
 */
interface Resolved {
  digest: string;
  /** The sha256 the image file itself must have, as the registry or stream says (not as a cache entry says). */
  fileDigest: string;
  /** The disk's original file name, as the registry or stream says. */
  title: string;
  /** `maxBytes`: the download limit for a body of unannounced size (a registry descriptor always gives one). */
  download(host: Host, temp: string, maxBytes: number): Promise<StoredImageRecord>;
}

/** Asks the registry or the stream which disk is current; undefined for plain URLs (nothing to ask). */
async function resolveRemote(
  host: Host,
  source: Exclude<ImageSource, { kind: 'file' }>,
  imageText: string,
  vmType: VmType,
  arch: MachineArch,
): Promise<Resolved | undefined> {
  if (source.kind === 'registry') {
    const disk = await resolveDisk(source.parsed, arch, vmType);
    host.info(
      `Resolved ${imageText}: disk manifest ${disk.manifestDigest} (${externalText(disk.title)}, ${formatBytes(disk.layer.size)})`,
    );
    return {
      digest: disk.manifestDigest,
      fileDigest: disk.layer.digest,
      title: disk.title,
      download: async (h, temp) => ({
        source: `docker://${source.reference}`,
        digest: disk.manifestDigest,
        fileDigest: disk.layer.digest,
        title: disk.title,
        size: await downloadDisk(h, source.parsed, disk, temp),
      }),
    };
  }
  if (source.kind === 'fcos') {
    const disk = await resolveFcosDisk(source.streamUrl, arch, vmType);
    const digest = `sha256:${disk.sha256}`;
    host.info(`Resolved ${imageText} (Fedora CoreOS ${disk.release}): ${disk.title}, sha256 ${disk.sha256}`);
    return {
      digest,
      fileDigest: digest,
      title: disk.title,
      download: async (h, temp, maxBytes) => {
        const size = await downloadUrl(h, disk.location, temp, { maxBytes });
        const actual = await digestFile(temp);
        if (actual !== digest) throw new Error(`${disk.title} has ${actual}, the stream publishes ${digest}`);
        // The record is cached: without the URL's `user:password@`.
        const shown = withoutCredentials(source.streamUrl);
        return { source: shown, digest, fileDigest: digest, title: disk.title, size };
      },
    };
  }
  return undefined;
}

/** The source could not be reached at all: only then may an older cached image of it stand in. */
function unreachable(error: unknown): boolean {
  return isUnreachable(error) || error instanceof StreamUnreachable;
}

/**
 * Registry, stream or URL image: resolve, restore or download once, verify, and place it for podman. `imageText`
 * is the input without a URL's `user:password@` (shownImageText): it is in the cache key and in error messages.
 */
async function locateRemote(
  host: Host,
  inputs: PreseedInputs,
  source: Exclude<ImageSource, { kind: 'file' }>,
  imageText: string,
  vmType: VmType,
  arch: MachineArch,
  maxBytes: number,
): Promise<Located> {
  const paths = storePaths(await stableDir(STABLE_DIR_NAME), source, vmType, arch);
  const cachePaths = [paths.image, paths.record];
  const base = cacheKeyBase(inputs, imageText, vmType, arch);

  const origin = { registry: 'registry', fcos: 'stream', url: 'server' }[source.kind];
  let resolved: Resolved | undefined;
  let offlineReason: string | undefined;
  try {
    resolved = await resolveRemote(host, source, imageText, vmType, arch);
  } catch (error) {
    if (error instanceof InputError) throw error;
    if (!unreachable(error)) throw new ActionError(`cannot resolve ${imageText}: ${errorMessage(error)}`);
    offlineReason = errorMessage(error);
    host.warning(
      `The ${origin} of ${imageText} is unreachable (${offlineReason}); looking for a cached image.`,
    );
  }
  // Keyed by the resolved digest; when the source is unreachable only the newest cached entry for the same
  // image, provider and arch can be used. URLs are keyed by the URL.
  const key = resolved ? `${base}-${digestHex(resolved.digest)}` : `${base}-url`;

  let restored: RestoreResult | undefined;
  if (inputs.cache) {
    // Hashed on the way in, so the check below needs no second read. Not `readOnly`, although podman only reads
    // the image: it gives the disk it makes the image file's mode, and the directory backend's read-only hard link
    // made a disk that podman's own `qemu-img resize` (and qemu) cannot open as the runner user. A reflink where
    // the filesystem has them, else a copy, owned and writable like a download.
    const options = { fileDigests: true };
    restored = offlineReason
      ? await restoreCache(host, cachePaths, `${base}-`, [`${base}-`], options)
      : await restoreCache(host, cachePaths, key, [], options);
  }
  if (restored?.matchedKey) {
    const record = await readRecord(paths);
    const check = await verifyStored(paths, record, restored.fileDigests?.[paths.image]);
    // Online, the source says what the file must be: a cache entry whose record vouches for other bytes (or
    // names it otherwise) is refused. Offline only the record is there, which still catches a damaged file. A
    // stream disk's title becomes a file name in podman's cache dir: a record cannot make it climb out of it.
    const expected = resolved?.digest;
    const current =
      !resolved ||
      (record?.digest === resolved.digest &&
        record.fileDigest === resolved.fileDigest &&
        record.title === resolved.title);
    const titleOk = source.kind !== 'fcos' || (record !== undefined && isPlainFileName(record.title));
    if (check.ok && record && current && titleOk) {
      host.info(`Using the cached image ${paths.image} (${record.digest}), sha256 verified.`);
      await placeForPodman(host, paths.image, record, source, vmType, arch);
      return { path: paths.image, digest: record.digest, fromCache: true, size: record.size };
    }
    if (check.ok) await removeStored(paths);
    const why = !check.ok
      ? check.reason
      : !titleOk
        ? `its record names the disk ${JSON.stringify(externalText(record?.title ?? ''))}, which is no plain file name`
        : `it is ${record?.digest} with file ${record?.fileDigest}, not ${expected} with file ${resolved?.fileDigest}${record?.title === resolved?.title ? '' : ` (named ${JSON.stringify(externalText(record?.title ?? ''))}, not ${externalText(resolved?.title ?? '')})`}`;
    if (offlineReason) {
      throw new ActionError(
        `the cached image for ${imageText} is unusable (${why}) and the ${origin} is unreachable (${offlineReason}); it was deleted.`,
      );
    }
    host.warning(`The cached image is unusable (${why}); it was deleted and will be downloaded again.`);
  } else if (offlineReason) {
    throw new ActionError(
      `cannot get ${imageText}: the ${origin} is unreachable (${offlineReason}) and no cached image exists.`,
    );
  }

  const located = await download(host, source, resolved, paths, maxBytes);
  if (inputs.cache) planCacheSave(host, { paths: cachePaths, key });
  await placeForPodman(host, paths.image, located.record, source, vmType, arch);
  return located;
}

async function download(
  host: Host,
  source: Exclude<ImageSource, { kind: 'file' }>,
  resolved: Resolved | undefined,
  paths: StorePaths,
  maxBytes: number,
): Promise<Located & { record: StoredImageRecord }> {
  // In a scratch dir post removes (beside the stable dir, so the final rename stays on one filesystem): a main
  // killed mid-download leaves its partial file there, never in the stable dir, which no one empties.
  const scratch = await scratchDir(host);
  const temp = join(scratch, basename(paths.image));
  let record: StoredImageRecord;
  try {
    if (resolved) {
      record = await resolved.download(host, temp, maxBytes);
    } else if (source.kind === 'url') {
      const size = await downloadUrl(host, source.url, temp, { maxBytes });
      const fileDigest = await digestFile(temp);
      const title = new URL(source.url).pathname.split('/').pop() ?? '';
      // The record is cached: without the URL's `user:password@`.
      record = { source: withoutCredentials(source.url), digest: fileDigest, fileDigest, title, size };
    } else {
      throw new Error('a registry or stream image must be resolved before it is downloaded');
    }
  } catch (error) {
    await rm(scratch, { recursive: true, force: true });
    throw new ActionError(`download failed (nothing was kept): ${errorMessage(error)}`);
  }
  await commitDownload(temp, paths, record);
  await rm(scratch, { recursive: true, force: true });
  host.info(
    `Stored ${externalText(record.title)} at ${paths.image} (${formatBytes(record.size)}, ${record.digest})`,
  );
  return { path: paths.image, digest: record.digest, fromCache: false, size: record.size, record };
}

/**
 * Puts the image where podman looks before downloading its default image: podman 5's cache file is named by the
 * disk manifest digest; podman 4 keeps the stream's file under its own name and reuses it when the sha256
 * matches the stream.
 */
async function placeForPodman(
  host: Host,
  imagePath: string,
  record: StoredImageRecord,
  source: ImageSource,
  vmType: VmType,
  arch: MachineArch,
): Promise<void> {
  // Podman's cache dir is per provider, not per arch, and podman here only inits the host's arch: another arch's
  // disk there is never used, and pruning for it would remove the host's disk an earlier step (or podman) put there.
  if (!isHostArch(arch)) {
    host.info(`Not placed in podman's image cache: podman here inits ${process.arch} machines only.`);
    return;
  }
  let name: string;
  if (source.kind === 'registry') name = podmanCacheFileName(record.digest, vmType);
  else if (source.kind === 'fcos') name = record.title;
  else return;
  // Only podman 5's digest-named disks are ours to prune; podman 4 keeps stream files by their own names.
  const outdated = source.kind === 'registry' ? isPodmanCachedDisk : undefined;
  // A main killed between the link and the rename would leave the temporary name in podman's cache, in HOME (which
  // persists on a self-hosted runner), keeping a whole disk alive: post removes it.
  const { target, removed } = await placeInPodmanCache(
    imagePath,
    machineDirs(vmType).imageCache,
    name,
    outdated,
    (temp) => saveRunState(host, { podmanCacheTemp: temp }),
  );
  host.info(`Placed in podman's image cache: ${target}`);
  if (removed.length) {
    host.info(
      `Removed ${removed.length} outdated disk(s) from podman's image cache, as podman does when it pulls a newer one: ${removed.join(', ')}`,
    );
  }
}

async function writeContainersConf(host: Host, version: PodmanVersion, imagePath: string): Promise<string> {
  const confPath = join(await stableDir(STABLE_DIR_NAME), 'containers.conf');
  const plan = await planContainersConf(imagePath, containersConfVariable(version), confPath);
  // 0644 and owned by the runner user: podman 4 writes its machine connections into the CONTAINERS_CONF file.
  await writeFileAtomic(confPath, plan.text, 0o644);
  host.exportVariable(plan.variable, confPath);
  host.info(
    `Wrote ${confPath} ([machine] image = ${imagePath}${plan.base ? `, other settings from ${plan.base}` : ''}) and exported ${plan.variable}.`,
  );
  if (plan.dropped) {
    host.warning(
      `podman ${version.text} reads only the ${plan.variable} file, so the settings in ${externalText(plan.dropped.join(', '), 500)} no longer apply in this job's later steps: set the ones you need in your containers.conf before this step (it copies the most specific one, here ${plan.base ?? 'none'}), or use podman 4.4 or later (CONTAINERS_CONF_OVERRIDE).`,
    );
  }
  // Podman finds the file only through the variable: sudo resets the environment (env_reset), so a
  // `sudo -u other podman machine init` would download the default image instead, and nothing here can tell.
  host.info(
    `podman run without this environment (\`sudo -u <user>\`, \`env -i\`) does not see it and downloads its default image: pass ${plan.variable} on (\`sudo --preserve-env=${plan.variable} -u <user> podman machine init\`); that user must be able to read ${confPath} and the image.`,
  );
  return confPath;
}

/**
 * From here post removes the machine (with `cleanup`). Set before init, which may fail half way, but only after
 * a restore succeeded: a refused restore may have met a machine of the same name that is not ours.
 */
function markCreated(host: Host, inputs: PreseedInputs, state: PreseedState, vmType: VmType): void {
  if (!inputs.cleanup) return;
  state.removeMachine = { name: inputs.machineName, provider: vmType };
  saveRunState(host, state);
}

/**
 * What podman says for a machine that is not there: `<name>: VM does not exist` (podman 4's ErrNoSuchVM,
 * podman 5's ErrVMDoesNotExist; every provider).
 */
const NO_SUCH_MACHINE = /\bVM does not exist\b/;

/**
 * A machine of this name that exists before init is not ours: init would fail on it, and post (with `cleanup`)
 * would then remove it, such as a self-hosted runner's own long-lived machine. Checked before post is told to
 * remove anything. Only podman's own "does not exist" counts as no machine: an inspect that fails otherwise (a
 * config it cannot parse or open, podman itself failing) may hide a machine of that name, which podman 4.3's
 * init would then write over and post would remove.
 */
async function refuseExistingMachine(name: string, vmType: VmType): Promise<void> {
  const inspect = await exec('podman', ['machine', 'inspect', name], {
    timeoutMs: INSPECT_TIMEOUT_MS,
    env: machineEnv(vmType),
    allowFailure: true,
  });
  if (inspect.exitCode === 0) {
    throw new ActionError(
      `a ${vmType} machine named ${name} exists already; it was not made by this step, so it is neither initialised again nor removed. Set \`machine-name\` to another name, or remove it first.`,
    );
  }
  if (!NO_SUCH_MACHINE.test(inspect.stderr)) {
    const said = externalText(inspect.stderr.trim().split('\n').pop() ?? '', 300);
    throw new ActionError(
      `cannot tell whether a ${vmType} machine named ${name} exists: \`podman machine inspect ${name}\` failed (exit ${inspect.exitCode}${said ? `: ${said}` : ''}), so it is neither initialised nor removed. Repair or remove that machine (its config is in ${machineDirs(vmType).config}), or set \`machine-name\` to another name.`,
    );
  }
}

function machineEnv(vmType: VmType): NodeJS.ProcessEnv {
  return { ...process.env, [PROVIDER_ENV]: vmType };
}

async function initMachine(
  host: Host,
  inputs: PreseedInputs,
  version: PodmanVersion,
  vmType: VmType,
  imagePath: string,
): Promise<void> {
  const args = initArgs(version, {
    name: inputs.machineName,
    imagePath,
    cpus: inputs.cpus,
    memoryMiB: inputs.memoryMiB,
    diskSizeGiB: inputs.diskSizeGiB,
    rootful: inputs.rootful,
  });
  await host.group(`podman ${args.join(' ')}`, async () => {
    const onLine = (line: string) => host.info(line);
    await exec('podman', args, { timeoutMs: MACHINE_TIMEOUT_MS, env: machineEnv(vmType), onLine });
  });
}

async function startMachine(host: Host, name: string, vmType: VmType): Promise<void> {
  const args = startArgs(name);
  await host.group(`podman ${args.join(' ')}`, async () => {
    const onLine = (line: string) => host.info(line);
    await exec('podman', args, { timeoutMs: MACHINE_TIMEOUT_MS, env: machineEnv(vmType), onLine });
  });
}

/**
 * cache-scope: machine. A hit puts the saved machine into this run's HOME / XDG dirs instead of running init; a
 * miss runs init and stages the machine (before any start: a running machine's disk is not a consistent copy)
 * for post to save. Returns whether the machine came from the cache.
 */
async function restoreOrInitMachine(
  host: Host,
  inputs: PreseedInputs,
  state: PreseedState,
  version: PodmanVersion,
  vmType: VmType,
  arch: MachineArch,
  located: Located,
): Promise<boolean> {
  const stageDir = join(await stableDir(STABLE_DIR_NAME), MACHINE_STAGE_DIR);
  const key = buildCacheKey({
    prefix: `${inputs.cacheKeyPrefix}-machine`,
    arch,
    inputs: {
      image: located.digest,
      name: inputs.machineName,
      cpus: String(inputs.cpus ?? ''),
      memory: String(inputs.memoryMiB ?? ''),
      disk: String(inputs.diskSizeGiB ?? ''),
      rootful: String(inputs.rootful),
      vmType,
      podman: `${version.major}.${version.minor}`,
    },
  });
  // Only our own staging dir is cleared: a leftover from an earlier job on this runner must not mix in.
  await rm(stageDir, { recursive: true, force: true });
  const restored = await restoreCache(host, [stageDir], key);
  if (restored.hit) {
    const machine = await host.group('Restoring the cached machine', () => restoreMachine(stageDir));
    markCreated(host, inputs, state, vmType);
    host.info(
      `Restored machine ${machine.name} from the cache (podman machine init was not run): ${machine.configPath}; files: ${machine.files.join(', ')}`,
    );
    return true;
  }
  await refuseExistingMachine(inputs.machineName, vmType);
  markCreated(host, inputs, state, vmType);
  await initMachine(host, inputs, version, vmType, located.path);
  const manifest = await stageMachine(stageDir, vmType, inputs.machineName);
  host.info(
    `Staged machine ${manifest.name} (${manifest.files.length + 1} files) in ${stageDir} for the cache.`,
  );
  state.machineSave = { paths: [stageDir], key };
  saveRunState(host, state);
  return false;
}
