/**
 * Podman 4's default machine image: Fedora CoreOS from a stream-metadata JSON, not a machine-os OCI image
 * (containers/podman v4.9 pkg/machine/fcos.go `GetFCOSDownload`). `podman machine init` reads
 * `https://builds.coreos.fedoraproject.org/streams/<stream>.json` (stream `testing` unless containers.conf's
 * `[machine] image` says `stable` or `next`) and takes, for the host's arch, the provider's artifact and format:
 * qemu `qcow2.xz`, applehv `raw.gz`, hyperv `vhdx.zip`. It checks the downloaded file against the stream's
 * sha256 and keeps it as `<data dir>/<provider>/cache/<last URL segment>`.
 *
 * WSL on podman 4 is different: an unversioned `releases/latest/download/rootfs.tar.xz` with no published
 * checksum (pkg/machine/wsl/fedora.go), which cannot be verified or keyed, so it is not resolved here.
 */
import { InputError } from '../../core/inputs.js';
import { fetchFollowing, RedirectNotFollowed } from '../../core/redirects.js';
import { externalText, networkFailure } from '../../core/oci/response.js';
import {
  ProxyError,
  readCapped,
  urlCredentials,
  withProxiedFetch,
  type ProxiedFetch,
} from '../../core/proxy-env.js';
import type { Response } from 'undici';
import { Inputs } from './constants.js';
import type { MachineArch, VmType } from './podman-host.js';

export const FCOS_STREAMS = ['testing', 'stable', 'next'] as const;
export const FCOS_STREAM_BASE = 'https://builds.coreos.fedoraproject.org/streams/';
/** What podman 4's containers.conf sets as `[machine] image` by default on Linux and macOS. */
export const PODMAN4_DEFAULT_STREAM = 'testing';

const STREAM_TIMEOUT_MS = 30_000;
const STREAM_ATTEMPTS = 3;
/** Stream metadata is a few hundred KB; anything far larger is not stream metadata. */
const MAX_STREAM_BYTES = 16 * 1024 * 1024;

export interface FcosDisk {
  location: string;
  /** Hex sha256 of the compressed file, as published in the stream. */
  sha256: string;
  release: string;
  /** The file name podman 4 gives it: the last segment of the location. */
  title: string;
}

/**
 * A name that is safe as one file name here and in podman's cache dir: no separator, no `..`, nothing a shell or a
 * log would read as more. Every disk title that becomes a file name is checked with this, wherever it comes from
 * (the stream, or a cached record of it).
 */
export function isPlainFileName(name: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9._+-]*$/.test(name);
}

export function fcosStreamUrl(stream: string): string {
  return `${FCOS_STREAM_BASE}${stream}.json`;
}

/** Podman 4's Artifact().String() and Format().KindWithCompression() per provider. */
export function fcosArtifact(vmType: VmType): { artifact: string; format: string } {
  switch (vmType) {
    case 'qemu':
      return { artifact: 'qemu', format: 'qcow2.xz' };
    case 'applehv':
      return { artifact: 'applehv', format: 'raw.gz' };
    case 'hyperv':
      return { artifact: 'hyperv', format: 'vhdx.zip' };
    case 'wsl':
      throw new InputError(
        Inputs.image,
        'podman 4 on WSL downloads an unversioned Fedora rootfs (releases/latest/download/rootfs.tar.xz) without a published checksum; give its URL or a local file as `image`, or use podman 5.',
      );
    case 'libkrun':
      throw new InputError(Inputs.vmType, 'libkrun needs podman 5.2 or later.');
  }
}

/** A JSON value as an object to read fields from, or undefined when it is none (null, a list, text). */
export function jsonObject(value: unknown): Record<string, unknown> | undefined {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : undefined;
}

/** architectures.<arch>.artifacts.<artifact>.formats.<format>.disk, checked field by field (hostile JSON). */
export function selectFcosDisk(stream: unknown, arch: MachineArch, vmType: VmType): FcosDisk {
  const { artifact, format } = fcosArtifact(vmType);
  const where = `${arch}/${artifact}/${format}`;
  const arches = jsonObject(jsonObject(stream)?.architectures);
  if (!arches) throw new Error('the stream metadata has no architectures');
  const artifacts = jsonObject(jsonObject(arches[arch])?.artifacts);
  if (!artifacts) throw new Error(`the stream has no ${arch} artifacts`);
  const platform = jsonObject(artifacts[artifact]);
  const disk = jsonObject(jsonObject(jsonObject(platform?.formats)?.[format])?.disk);
  if (!disk) {
    throw new Error(
      `the stream has no ${where} disk; it offers ${externalText(Object.keys(artifacts).join(', ')) || 'nothing'}`,
    );
  }
  const location = disk.location;
  const sha256 = disk.sha256;
  if (typeof location !== 'string' || typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sha256)) {
    throw new Error(`the ${where} disk has no location or no sha256`);
  }
  let url: URL;
  try {
    url = new URL(location);
  } catch {
    throw new Error(`the ${where} disk location is not a URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new Error(`the ${where} disk location uses ${url.protocol}`);
  }
  const title = url.pathname.split('/').pop() ?? '';
  // The name becomes a file name here and in podman's cache dir.
  if (!isPlainFileName(title) || !title.endsWith(`.${format}`)) {
    throw new Error(`the ${where} disk location does not end in a plain *.${format} file name`);
  }
  // Shown in the log only: one line of plain text, whatever the stream sends.
  const release = typeof platform?.release === 'string' ? externalText(platform.release, 100) : '';
  return { location: url.toString(), sha256, release, title };
}

/** The stream could not be reached at all (as opposed to an answer), so a cached image may stand in. */
export class StreamUnreachable extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StreamUnreachable';
  }
}

/**
 * A stream URL's `user:password@` is sent as Basic auth to the stream's own origin (fetch drops it on a redirect
 * to another one), as the URL download sends it; the disk the stream names gets it only on that same origin (a
 * mirror serving both behind one login). Fetch refuses a URL holding them, and messages never name them.
 */
export async function resolveFcosDisk(
  streamUrl: string,
  arch: MachineArch,
  vmType: VmType,
): Promise<FcosDisk> {
  fcosArtifact(vmType);
  const url = new URL(streamUrl);
  const authorization = urlCredentials(url)?.authorization;
  const plain = withoutCredentials(url);
  // Through the environment's proxy, as podman itself fetches the stream.
  const disk = await withProxiedFetch(STREAM_TIMEOUT_MS, (fetch) =>
    fetchFcosDisk(fetch, plain, authorization, arch, vmType),
  );
  const location = new URL(disk.location);
  if (authorization && location.origin === url.origin) {
    location.username = url.username;
    location.password = url.password;
  }
  return { ...disk, location: location.href };
}

/** `url` without its `user:password@`, as messages and records may name it. */
export function withoutCredentials(url: string | URL): string {
  const plain = new URL(url);
  plain.username = '';
  plain.password = '';
  return plain.href;
}

async function fetchFcosDisk(
  fetch: ProxiedFetch,
  streamUrl: string,
  authorization: string | undefined,
  arch: MachineArch,
  vmType: VmType,
): Promise<FcosDisk> {
  let last = '';
  for (let attempt = 0; attempt < STREAM_ATTEMPTS; attempt++) {
    let response: Response;
    try {
      // Followed by hand (core/redirects): fetch would not send the credentials again on the stream's own origin
      // after a hop through another, and the stream is where the disk's sha256 comes from.
      response = await fetchFollowing(fetch, streamUrl, {
        signal: AbortSignal.timeout(STREAM_TIMEOUT_MS),
        authorization,
      });
    } catch (error) {
      // A redirect not followed is an answer, not an unreachable stream.
      if (error instanceof RedirectNotFollowed)
        throw new Error(`${streamUrl}: ${error.message}; not followed.`);
      // fetch says only "fetch failed"; what happened (refused, a redirect loop, DNS, the timeout) is its cause.
      const failure = networkFailure(error, streamUrl, STREAM_TIMEOUT_MS);
      // A proxy's 407 or 403 stays one however often it is asked.
      if (failure instanceof ProxyError) throw new StreamUnreachable(failure.message);
      last = failure.message;
      continue;
    }
    if (response.status >= 500 || response.status === 429) {
      await response.body?.cancel();
      last = `${streamUrl}: HTTP ${response.status}`;
      continue;
    }
    if (response.status !== 200) {
      await response.body?.cancel();
      throw new Error(`${streamUrl} answered HTTP ${response.status}`);
    }
    const text = await readCapped(response, MAX_STREAM_BYTES);
    if (text === undefined)
      throw new Error(`${streamUrl} is not stream metadata (over ${MAX_STREAM_BYTES} bytes)`);
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new Error(`${streamUrl} is not JSON`);
    }
    return selectFcosDisk(parsed, arch, vmType);
  }
  throw new StreamUnreachable(`${last} (after ${STREAM_ATTEMPTS} attempts)`);
}
