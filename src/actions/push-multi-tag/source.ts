/**
 * Image sources a push can start from, and how each becomes an OCI layout on disk, once: `oci:` is read in
 * place, `oci-archive:` is unpacked, and containers-storage / docker-archive / docker:// are exported with
 * skopeo (containers-storage through `podman save` when CONTAINER_HOST points at a remote podman service, or when
 * skopeo cannot be run).
 * `docker-daemon:` is parsed here and read by the push action itself (from the engine's export API).
 *
 * A child tool's failure becomes one line that says what it means and what to do, with the tool's own words
 * (cut short) at the end; its raw output goes to the debug log only, so nothing is printed twice.
 */
import { createReadStream } from 'node:fs';
import { chmod, lstat, mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { exec, ExecError, type ExecResult } from '../../core/exec.js';
import { InputError } from '../../core/inputs.js';
import { ActionError, errorMessage } from '../../core/run.js';
import { formatSeconds } from '../../core/summary.js';
import { dockerSaveToLayout } from './docker-save.js';
import { Inputs, LOOKUP_NOTICE_MS, LOOKUP_TIMEOUT_MS } from './constants.js';
import { readOciLayout, type LocalImage } from '../../core/oci/layout.js';
import { formatReference, looksLikeHost, parseReference } from '../../core/oci/reference.js';
import { externalText } from '../../core/oci/response.js';

export type SourceTransport =
  'containers-storage' | 'oci' | 'oci-archive' | 'docker-archive' | 'docker' | 'docker-daemon';

export type ImageSourceSpec =
  | {
      transport: Exclude<SourceTransport, 'docker-daemon'>;
      /** A path (oci, archives), an image name (containers-storage) or a reference (docker). */
      location: string;
      /** The image inside a layout or archive (`oci:<dir>:<ref>`). */
      ref?: string;
    }
  | {
      transport: 'docker-daemon';
      /** An image name or ID as the Docker engine knows it. */
      location: string;
      ref?: undefined;
    };

/** The sources this module exports itself (all but docker-daemon). */
export type ExportableSource = Exclude<ImageSourceSpec, { transport: 'docker-daemon' }>;

export type Compression = 'gzip' | 'zstd';

/** How skopeo reaches a docker:// source: the same rules as the push's own registry client. */
export interface RemoteSourceAccess {
  /** false: https without verification, or plain http (skopeo's --src-tls-verify=false). */
  tlsVerify: boolean;
  /** A private auth file holding the source's credential. */
  authFile?: string;
  /** No credential was found: skopeo must not look for one itself (--src-no-creds). */
  anonymous?: boolean;
  /** The certs.d directory with the registry's CAs and client certificate (--src-cert-dir). */
  certDir?: string;
}

export interface OpenSourceOptions extends RemoteSourceAccess {
  /** A private directory for exports; the caller removes it. */
  scratch: string;
  env?: NodeJS.ProcessEnv;
  /**
   * Compress uncompressed layers: always while exporting containers-storage / docker-archive (gzip unless
   * given), and for layouts and oci-archives only when given and the image has uncompressed layers.
   */
  compression?: Compression;
  timeoutMs: number;
  /** How long podman (or buildah) may take to say what a containers-storage name is (LOOKUP_TIMEOUT_MS). */
  lookupTimeoutMs?: number;
  /** After how long a lookup still waiting says so in the log (LOOKUP_NOTICE_MS). */
  lookupNoticeMs?: number;
  log: (line: string) => void;
  /** Where a child tool's raw output goes (the step's debug log). */
  debug?: (line: string) => void;
}

const UNCOMPRESSED_LAYERS = new Set([
  'application/vnd.oci.image.layer.v1.tar',
  'application/vnd.docker.image.rootfs.diff.tar',
]);

const TRANSPORTS: readonly SourceTransport[] = [
  'containers-storage',
  'oci',
  'oci-archive',
  'docker-archive',
  'docker',
  'docker-daemon',
];

/** containers/image transports a push cannot start from, and what to do instead. */
const UNSUPPORTED_TRANSPORTS: Record<string, string> = {
  dir: 'convert it first: skopeo copy dir:<path> oci:<layout>',
  tarball: 'import it first (podman import) and push the containers-storage image',
  sif: 'convert it first: skopeo copy sif:<file> oci:<layout>',
  ostree: 'export it first: skopeo copy ostree:<ref> oci:<layout>',
  atomic: 'it was removed from containers/image; use docker://',
};

/** `path[:ref]` where a ref never contains a slash (so a path with a colon inside a directory name survives). */
function splitPathRef(text: string): { location: string; ref?: string } {
  const colon = text.lastIndexOf(':');
  if (colon > 0 && !text.slice(colon + 1).includes('/')) {
    return { location: text.slice(0, colon), ref: text.slice(colon + 1) || undefined };
  }
  return { location: text };
}

export function parseImageSource(text: string): ImageSourceSpec {
  const trimmed = text.trim();
  const m = /^([a-z][a-z0-9-]*):(.*)$/s.exec(trimmed);
  const transport =
    m && (TRANSPORTS as readonly string[]).includes(m[1]!) ? (m[1] as SourceTransport) : undefined;
  if (!transport) {
    const unsupported = m ? UNSUPPORTED_TRANSPORTS[m[1]!] : undefined;
    if (unsupported) {
      throw new Error(`the ${m![1]}: transport is known but not supported as a push source; ${unsupported}.`);
    }
    // A bare name is a containers-storage image; `word:/path` or `word://x` is a transport we do not know.
    if (m && (m[2]!.startsWith('/') || m[2]!.startsWith('.'))) {
      throw new Error(
        `unknown transport '${m[1]}:'; use one of ${TRANSPORTS.map((t) => `${t}:`).join(', ')}.`,
      );
    }
    // A path is no image name; say which transport reads what it probably is.
    if (!m && (/^[./~]/.test(trimmed) || trimmed.endsWith('/') || /\.tar$/i.test(trimmed))) {
      throw new Error(
        `'${trimmed}' is a path, not an image name: write oci:${trimmed} for an OCI layout directory, or oci-archive:${trimmed} / docker-archive:${trimmed} for a tar file.`,
      );
    }
    parseReference(trimmed);
    return { transport: 'containers-storage', location: trimmed };
  }
  const rest = m![2]!;
  if (!rest) throw new Error(`'${trimmed}' names no image after '${transport}:'.`);
  switch (transport) {
    case 'docker':
      if (!rest.startsWith('//')) throw new Error(`'${trimmed}': write docker://<reference>.`);
      parseReference(rest.slice(2));
      return { transport, location: rest.slice(2) };
    case 'containers-storage':
      return { transport, location: rest };
    case 'docker-daemon':
      // skopeo's form: a name with a tag or digest, or an image ID (sha256:<hex>).
      if (!/^sha256:[0-9a-f]{64}$/.test(rest)) parseReference(rest);
      return { transport, location: rest };
    case 'docker-archive': {
      // containers/image's form: path[:docker-reference] or path[:@index], split at the first colon, since the
      // reference may hold colons of its own (a registry port, a tag).
      const colon = rest.indexOf(':');
      if (colon <= 0) return { transport, location: rest };
      const ref = rest.slice(colon + 1);
      if (!/^@\d+$/.test(ref)) parseReference(ref);
      return { transport, location: rest.slice(0, colon), ref };
    }
    default: {
      const { location, ref } = splitPathRef(rest);
      return ref === undefined ? { transport, location } : { transport, location, ref };
    }
  }
}

export function formatImageSource(spec: ImageSourceSpec): string {
  if (spec.transport === 'docker') return `docker://${spec.location}`;
  if (spec.transport === 'docker-daemon') return `docker-daemon:${spec.location}`;
  return `${spec.transport}:${spec.location}${spec.ref !== undefined ? `:${spec.ref}` : ''}`;
}

/** Turns a source into a local OCI layout (exporting it once when needed) and reads the image from it. */
export async function openImageSource(
  spec: ExportableSource,
  options: OpenSourceOptions,
): Promise<LocalImage> {
  const env = options.env ?? process.env;
  const subject = formatImageSource(spec);
  const run = async (cmd: string, args: string[]) => {
    try {
      return await exec(cmd, args, { timeoutMs: options.timeoutMs, env, onLine: options.debug });
    } catch (error) {
      if (!(error instanceof ExecError)) throw error;
      const code = notRunnable(error);
      const why = code
        ? `cannot read the source ${subject}: ${cannotStart(cmd, code)}; it reads ${spec.transport}: sources.`
        : childFailure(cmd, error, spec);
      throw new ActionError(why, { cause: error });
    }
  };
  const layout = join(options.scratch, 'layout');
  if (spec.transport === 'oci' || spec.transport === 'oci-archive') {
    let dir = spec.location;
    if (spec.transport === 'oci-archive') {
      await mkdir(layout, { recursive: true });
      options.log(`Unpacking ${spec.location}`);
      const untar = await run('tar', ['-xf', spec.location, '-C', layout]).then(
        () => undefined,
        (error: unknown) => error,
      );
      // Also after a failed tar: the directories it made are opened to us, so the scratch dir can be removed.
      const oddity = await unpackedOddity(layout);
      if (untar) throw untar;
      if (oddity) {
        throw new ActionError(
          `cannot read the source ${subject}: the archive holds ${oddity}; an OCI archive holds only files and directories.`,
        );
      }
      dir = layout;
    }
    const image = await readOciLayout(dir, spec.ref);
    if (!options.compression || !image.blobs.some((b) => UNCOMPRESSED_LAYERS.has(b.mediaType))) return image;
    const compressed = join(options.scratch, 'compressed');
    options.log(`Compressing the uncompressed layers of ${subject} with ${options.compression}`);
    await run('skopeo', [
      'copy',
      '--quiet',
      '--all',
      '--dest-compress',
      '--dest-compress-format',
      options.compression,
      `oci:${dir}${spec.ref !== undefined ? `:${spec.ref}` : ''}`,
      `oci:${compressed}:image`,
    ]);
    return readOciLayout(compressed, 'image');
  }

  await mkdir(layout, { recursive: true });

  let from = subject;
  const copyArgs = ['copy', '--quiet'];
  if (spec.transport === 'docker') copyArgs.push('--all', ...remoteSourceFlags(options));
  const uncompressed = spec.transport === 'containers-storage' || spec.transport === 'docker-archive';
  if (uncompressed) {
    copyArgs.push('--dest-compress', '--dest-compress-format', options.compression ?? 'gzip');
  }
  const remote = env.CONTAINER_HOST;
  if (spec.transport === 'containers-storage' && remote) {
    // A service's `podman save` of a list's name writes the image of the service's own platform alone (seen with
    // podman 4.3), and its `manifest push` writes on the service's side: pushed, it would be one architecture of
    // `podman --remote build --platform a,b --manifest app`, silently.
    if (await isManifestList(spec.location, { ...options, env }, remote)) {
      throw new InputError(
        Inputs.source,
        `${spec.location} is a manifest list in the storage of the podman service at ${remote} (CONTAINER_HOST): a podman service exports one image of a list, not the list. Run the step without CONTAINER_HOST where that storage is local, or push the list to a registry (podman manifest push --all) and use docker:// as the source.`,
      );
    }
    // skopeo reads only local storage; a remote service hands the image over as an archive instead.
    const archive = join(options.scratch, 'saved.tar');
    options.log(`Saving ${spec.location} from the podman service at ${remote}`);
    await run('podman', ['--url', remote, 'save', '--format', 'oci-archive', '-o', archive, spec.location]);
    from = `oci-archive:${archive}`;
  }
  if (spec.transport === 'containers-storage' && !remote) {
    if (await isManifestList(spec.location, { ...options, env })) {
      // `podman image inspect` resolves a list's name to the runner's own platform's image: that ID alone would be
      // pushed, silently one architecture of `podman build --platform a,b --manifest app`. podman writes the list
      // and every image in it to the layout itself (layers compressed as asked).
      options.log(
        `${spec.location} is a manifest list in local storage: exporting it and all its images with podman manifest push --all`,
      );
      const format = options.compression ?? 'gzip';
      await run('podman', [
        'manifest',
        'push',
        '--all',
        '--quiet',
        '--compression-format',
        format,
        spec.location,
        `oci:${layout}:image`,
      ]);
      return readOciLayout(layout, 'image');
    }
    const id = await localImageId(spec.location, { ...options, env });
    if (id) from = `containers-storage:${id}`;
  }
  // containers/image puts its big temporary files (an oci-archive unpacked, a compressed docker-archive
  // decompressed) in /var/tmp whatever TMPDIR says, where a killed step would leave them: here they go with the
  // scratch dir, which post removes too.
  const tmp = join(options.scratch, 'tmp');
  await mkdir(tmp, { recursive: true });
  options.log(`Exporting ${from} to an OCI layout`);
  try {
    await run('skopeo', ['--tmpdir', tmp, ...copyArgs, from, `oci:${layout}:image`]);
  } catch (error) {
    const missing = error instanceof ActionError ? notRunnable(error.cause) : undefined;
    if (!missing || spec.transport !== 'containers-storage' || remote) throw error;
    // Debian's and Fedora's podman packages do not pull skopeo in: a podman-only runner still has podman's own
    // export, the archive `podman save` writes, read as the docker-daemon source reads an engine's export.
    const why = cannotStart('skopeo', missing);
    if (options.compression === 'zstd') {
      throw new ActionError(
        `cannot read the source ${subject}: ${why}, and compression: zstd needs it (Node.js 20 has no zstd); install skopeo, or leave compression unset (gzip).`,
      );
    }
    options.log(`${why}: exporting with podman save instead`);
    await savedByPodman(spec, from.slice('containers-storage:'.length), layout, { ...options, env });
  }
  return readOciLayout(layout, 'image');
}

/**
 * Why a tool could not be started at all, if that is the failure: ENOENT, or EACCES, which execvp also answers for
 * a missing tool when a PATH dir cannot be searched (a runner user's PATH naming /root/.cargo/bin).
 */
function notRunnable(error: unknown): string | undefined {
  const code = error instanceof ExecError ? error.spawnCode : undefined;
  return code === 'ENOENT' || code === 'EACCES' ? code : undefined;
}

function cannotStart(tool: string, code: string): string {
  return code === 'ENOENT'
    ? `${tool} is not installed`
    : `${tool} cannot be run (spawn EACCES: not installed, or not executable by this user)`;
}

/**
 * Exports a containers-storage image with `podman save` (docker-archive: layers uncompressed, gzip-compressed here
 * on the way into the layout, each checked against the config's diff_ids; zstd is refused by the caller). `image`
 * is the image ID resolved before, or the name as given.
 */
async function savedByPodman(
  spec: ExportableSource,
  image: string,
  layout: string,
  options: OpenSourceOptions & { env: NodeJS.ProcessEnv },
): Promise<void> {
  const subject = formatImageSource(spec);
  const archive = join(options.scratch, 'saved.tar');
  const id = /^[0-9a-f]{64}$/.test(image) ? `sha256:${image}` : undefined;
  const deadline = AbortSignal.timeout(options.timeoutMs);
  try {
    await exec('podman', ['save', '--quiet', '--format', 'docker-archive', '-o', archive, image], {
      timeoutMs: options.timeoutMs,
      env: options.env,
      onLine: options.debug,
    });
    await dockerSaveToLayout(createReadStream(archive), {
      layoutDir: layout,
      compress: 'gzip',
      what: subject,
      imageId: id,
      signal: deadline,
    });
  } catch (error) {
    if (error instanceof ExecError) {
      const code = notRunnable(error);
      const why = code
        ? `neither skopeo nor podman can be run (${cannotStart('podman', code)}); install skopeo`
        : childFailure('podman', error, spec).slice(`cannot read the source ${subject}: `.length);
      throw new ActionError(`cannot read the source ${subject}: ${why}`, { cause: error });
    }
    const said = errorMessage(error);
    const own = said.startsWith(`${subject}: `) ? said.slice(subject.length + 2) : said;
    throw new ActionError(`cannot read the source ${subject}: ${externalText(own, 300)}`, { cause: error });
  } finally {
    await rm(archive, { force: true });
  }
}

type LookupOptions = Pick<OpenSourceOptions, 'log' | 'lookupTimeoutMs' | 'lookupNoticeMs'> & {
  env: NodeJS.ProcessEnv;
};

/**
 * Whether podman (the service at `remote`, if given) knows `name` as a manifest list (`podman manifest exists`:
 * exit 0). Anything else, podman missing or failing included, is "no": the lookup or export that follows says
 * what is wrong. Only no answer in time ends the step (lookupHung).
 */
async function isManifestList(name: string, options: LookupOptions, remote?: string): Promise<boolean> {
  try {
    const args = [...(remote ? ['--url', remote] : []), 'manifest', 'exists', name];
    return (await lookup('podman', args, name, options, remote)).exitCode === 0;
  } catch (error) {
    if (!(error instanceof ExecError)) throw error;
    return false;
  }
}

/**
 * One lookup in storage. It waits as long as the export would: both wait for the storage's lock, which another
 * job's podman or buildah may hold for minutes on a shared runner (a pull, a commit), and a hung one for good.
 * A long wait is said once it passes LOOKUP_NOTICE_MS; no answer at all ends the read (lookupHung). Other
 * failures are the caller's to judge (ExecError).
 */
async function lookup(
  tool: string,
  args: string[],
  name: string,
  options: LookupOptions,
  remote?: string,
): Promise<ExecResult> {
  const timeoutMs = options.lookupTimeoutMs ?? LOOKUP_TIMEOUT_MS;
  const noticeMs = options.lookupNoticeMs ?? LOOKUP_NOTICE_MS;
  const notice = setTimeout(
    () =>
      options.log(
        `${tool} has not said in ${formatSeconds(noticeMs)} what ${name} is in ${storageOf(remote)}: waiting for its lock (another podman, buildah or skopeo holds it?), up to ${formatSeconds(timeoutMs)}`,
      ),
    noticeMs,
  );
  try {
    return await exec(tool, args, { timeoutMs, env: options.env, allowFailure: true });
  } catch (error) {
    if (error instanceof ExecError && timedOut(error)) throw lookupHung(tool, name, timeoutMs, remote);
    throw error;
  } finally {
    clearTimeout(notice);
  }
}

const storageOf = (remote?: string) =>
  remote ? `the storage of the podman service at ${remote}` : 'local storage';

/**
 * A lookup that got no answer: the tool hangs, most often on a lock of the storage that another process holds
 * (a podman, buildah or skopeo that hangs itself). skopeo and `podman save` read the same storage and would wait
 * for the same lock until the export's timeout, so the step ends here, saying so.
 */
function lookupHung(tool: string, name: string, timeoutMs: number, remote?: string): ActionError {
  return new ActionError(
    `cannot read the source containers-storage:${name}: ${tool} did not say within ${formatSeconds(timeoutMs)} what ${name} is in ${storageOf(remote)}; a process holding its lock (a podman, buildah or skopeo that hangs) is the usual cause, and the export would wait for that lock too.`,
  );
}

/** Whether exec stopped the tool at its timeout. */
function timedOut(error: ExecError): boolean {
  return /timed out after/.test(error.message);
}

/** The tools that build into containers-storage, in the order asked: each resolves short names the same way. */
const STORAGE_TOOLS: ReadonlyArray<[string, string[]]> = [
  ['podman', ['image', 'inspect', '--format', '{{.Id}}']],
  ['buildah', ['inspect', '--type', 'image', '--format', '{{.FromImageID}}']],
];

/**
 * The image ID a short name (no registry host) has in local storage, as podman and buildah resolve it, or
 * undefined for a full name or when neither tool is installed or knows it (skopeo then looks it up as before).
 * `podman build -t app` stores `localhost/app:latest` and redhat-actions/buildah-build outputs `app:latest`, while
 * skopeo's containers-storage transport reads a short name as `docker.io/library/app` and finds nothing. The export
 * then reads the image by that ID, so it is the one resolved even if the name moves meanwhile.
 */
async function localImageId(name: string, options: LookupOptions): Promise<string | undefined> {
  if (name.includes('/') && looksLikeHost(name.split('/')[0]!)) return undefined;
  for (const [tool, args] of STORAGE_TOOLS) {
    const ask = async (what: string) => {
      const result = await lookup(tool, [...args, what], name, options);
      const id = result.stdout.trim();
      return { result, id: result.exitCode === 0 && /^[0-9a-f]{64}$/.test(id) ? id : undefined };
    };
    // "not known" is the answer looked for; anything else (a broken containers.conf, a tool that cannot be run)
    // would otherwise be hidden behind skopeo's "no such image" for the name it reads, or end the step with the
    // bare error of a lookup that is only a courtesy. No answer in time is no courtesy: skopeo would hang too.
    const cannot = (why: string) => {
      options.log(`${tool} could not look up ${name} (${why}); reading it as skopeo does`);
      return undefined;
    };
    let answer;
    let hub: string | undefined;
    const hubName = dockerHubReading(name);
    try {
      answer = await ask(name);
      // skopeo (and this step before short names were resolved) reads `app` as docker.io/library/app:latest,
      // podman prefers localhost/app: when both are there and differ, which one is meant is the user's call.
      if (answer.id && hubName) hub = (await ask(hubName)).id;
    } catch (error) {
      if (!(error instanceof ExecError)) throw error;
      if (error.spawnCode === 'ENOENT') continue;
      return cannot(externalText(error.message, 300));
    }
    const { result, id } = answer;
    if (!id) {
      if (result.exitCode === 0 || /image not known/i.test(result.stderr)) return undefined;
      return cannot(
        `exit ${result.exitCode}: ${toolMessage(tool, result.stderr.trim() || result.stdout.trim()) || 'no message'}`,
      );
    }
    if (hub && hub !== id) {
      throw new InputError(
        Inputs.source,
        `the containers-storage name '${name}' names two images in local storage: ${tool} resolves it to image ${id.slice(0, 12)} (it looks in localhost/ first), skopeo reads it as ${hubName} (image ${hub.slice(0, 12)}). Write the full name of the one to push.`,
      );
    }
    options.log(
      `${name} is image ${id.slice(0, 12)} in local storage (resolved by ${tool}, as it resolves short names)`,
    );
    return id;
  }
  return undefined;
}

/** The full name skopeo's containers-storage transport reads a short name as (no tag: `latest`). */
function dockerHubReading(name: string): string | undefined {
  try {
    const ref = parseReference(name);
    if (ref.tag === undefined && ref.digest === undefined) ref.tag = 'latest';
    return formatReference(ref);
  } catch {
    return undefined;
  }
}

/**
 * What an unpacked archive holds besides files and directories, if anything. tar writes only inside the
 * directory, but it makes what the archive says there: a symlink `index.json -> /etc/shadow` (whose first bytes a
 * JSON error would quote in the log), a blob that links to any file of the runner, or (as root) a device node;
 * skopeo and podman write an OCI archive of files and directories only. tar also gives each directory the
 * archive's mode: one of 0000 could not be read, nor anything in it removed, by a runner that is not root, so each
 * is opened to its owner (us) on the way.
 */
async function unpackedOddity(dir: string, under = ''): Promise<string | undefined> {
  const path = join(dir, under);
  const info = await lstat(path);
  await chmod(path, (info.mode & 0o7777) | 0o700);
  let found: string | undefined;
  for (const entry of await readdir(path, { withFileTypes: true })) {
    const name = under ? `${under}/${entry.name}` : entry.name;
    // Every directory is opened, after an oddity too.
    const odd = entry.isDirectory()
      ? await unpackedOddity(dir, name)
      : entry.isFile()
        ? undefined
        : `${externalText(name, 120)}, a ${entry.isSymbolicLink() ? 'symlink' : 'device, FIFO or socket'}`;
    found ??= odd;
  }
  return found;
}

/** skopeo's --src-* flags for a registry source; never a secret (credentials travel in the auth file). */
export function remoteSourceFlags(access: RemoteSourceAccess): string[] {
  const flags = [`--src-tls-verify=${access.tlsVerify}`];
  if (access.certDir) flags.push('--src-cert-dir', access.certDir);
  if (access.authFile) flags.push('--src-authfile', access.authFile);
  else if (access.anonymous) flags.push('--src-no-creds');
  return flags;
}

/** What a tool's own error text means, for the sources it reads. */
const MEANINGS: ReadonlyArray<[RegExp, (registry: string) => string]> = [
  [
    /server gave HTTP response to HTTPS client/i,
    (r) => `the registry answered plain http; add ${r} to insecure-registries (or set tls-verify: false)`,
  ],
  [
    /tls: certificate required|tls: bad certificate|tls: unknown certificate authority/i,
    (r) =>
      `${r} requires a TLS client certificate; put client.cert and client.key in /etc/containers/certs.d/${r}/`,
  ],
  [
    /x509:|certificate signed by unknown authority|certificate is not (?:trusted|valid)/i,
    (r) =>
      `the TLS certificate of ${r} is not trusted; put its CA in /etc/containers/certs.d/${r}/ca.crt, or add ${r} to insecure-registries`,
  ],
  [
    /unauthorized|authentication required|requested access to the resource is denied|\b401\b/i,
    (r) => `${r} refused access; log in to it before this step, or give username and password`,
  ],
  [/manifest unknown|name unknown|\b404\b|not found/i, () => 'no such image there'],
  [/connection refused/i, (r) => `nothing answers at ${r}`],
  [/no such host|server misbehaving/i, (r) => `the host of ${r} is unknown`],
  [/i\/o timeout|deadline exceeded|timed out/i, (r) => `${r} did not answer in time`],
];

const LOCAL_MEANINGS: ReadonlyArray<[RegExp, string]> = [
  [
    /does not resolve to an image ID|image not known|no image found|identifier is not an image/i,
    'no such image in the container storage',
  ],
  [/no such file or directory/i, 'the file does not exist'],
  [
    /not a tar archive|unexpected EOF|invalid tar header|does not look like a tar archive/i,
    'the file is not a complete image archive',
  ],
  [/timed out after/i, 'it did not finish in time'],
];

/** A logrus line that is no error: podman 5 prints two cgroups-v1 deprecation warnings before anything else. */
const NOT_AN_ERROR = /^time="[^"]*" level=(?:warning|info|debug)\b/;

/**
 * The tool's own words: skopeo's `msg="..."` of its fatal line, else podman's last `Error: ` line, else the first
 * line that is no warning (else the first line). Podman 5 on a cgroups-v1 host starts every stderr with two
 * deprecation warnings of 230 characters, which would otherwise be all the log shows of the failure.
 */
function toolMessage(tool: string, text: string): string {
  const fatal = /level=fatal msg="((?:[^"\\]|\\.)*)"/.exec(text);
  const lines = text.split('\n').filter((l) => l.trim());
  const line = fatal
    ? fatal[1]!.replace(/\\"/g, '"')
    : (lines.findLast((l) => l.startsWith('Error: ')) ??
      lines.find((l) => !NOT_AN_ERROR.test(l)) ??
      lines[0] ??
      text);
  return externalText(line.replace(/^Error: /, '').replace(`${tool}: `, ''), 240);
}

/** One line for a failed export: what could not be read, what that means and what to do, then the tool's words. */
export function childFailure(tool: string, error: ExecError, spec: ExportableSource): string {
  const text = timedOut(error)
    ? error.message
    : error.result?.stderr.trim() || error.result?.stdout.trim() || error.message;
  const subject = formatImageSource(spec);
  // `podman manifest push --all` reads an image a list only refers to (`podman manifest add docker://…`) from that
  // registry. Its error names the storage and the list first (130 characters and more), which cut off the cause.
  const fetched =
    spec.transport === 'containers-storage'
      ? /opening "docker:\/\/([^"\n]*)" as image source: ([^\n]*)/.exec(text)
      : null;
  if (fetched) {
    return `cannot read the source ${subject}: an image of the manifest list is not in local storage, and podman could not read it from docker://${externalText(fetched[1]!, 200)}, where the list says it came from (${tool}: ${toolMessage(tool, fetched[2]!)})`;
  }
  const said = toolMessage(tool, text);
  let meaning: string | undefined;
  if (spec.transport === 'docker') {
    const registry = parseReference(spec.location).registry;
    meaning = MEANINGS.find(([re]) => re.test(text))?.[1](registry);
  } else {
    meaning = LOCAL_MEANINGS.find(([re]) => re.test(text))?.[1];
  }
  return `cannot read the source ${subject}: ${meaning ? `${meaning} (${tool}: ${said})` : `${tool}: ${said}`}`;
}
