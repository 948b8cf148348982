/**
 * What the `image` input names: a registry reference, a Fedora CoreOS stream (podman 4's default source), a
 * URL, or a file already on this machine.
 */
import { statSync } from 'node:fs';
import { resolve } from 'node:path';
import { InputError } from '../../core/inputs.js';
import { parseReference, type ImageReference } from '../../core/oci/reference.js';
import { urlCredentials } from '../../core/proxy-env.js';
import { errorMessage } from '../../core/run.js';
import { Inputs } from './constants.js';
import { FCOS_STREAMS, fcosStreamUrl, withoutCredentials } from './fcos-stream.js';

export type ImageSource =
  /** `reference` as given (after `docker://`), `parsed` as the registry client needs it. */
  | { kind: 'registry'; reference: string; parsed: ImageReference }
  | { kind: 'fcos'; stream: string; streamUrl: string }
  | { kind: 'url'; url: string }
  | { kind: 'file'; path: string };

/**
 * `testing` / `stable` / `next` name a Fedora CoreOS stream as podman 4's `--image-path` does; a URL of a
 * `.json` file is stream metadata (no disk image is JSON), which also lets a mirror of the stream be used.
 */
export function classifyImage(text: string): ImageSource {
  if ((FCOS_STREAMS as readonly string[]).includes(text)) {
    return { kind: 'fcos', stream: text, streamUrl: fcosStreamUrl(text) };
  }
  if (text.startsWith('docker://')) {
    const reference = text.slice('docker://'.length);
    if (!reference)
      throw new InputError(Inputs.image, 'a `docker://` reference needs a repository after it.');
    try {
      return { kind: 'registry', reference, parsed: parseReference(reference) };
    } catch (error) {
      throw new InputError(Inputs.image, `'${text}' is not an image reference: ${errorMessage(error)}`);
    }
  }
  if (/^https?:\/\//i.test(text)) {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new InputError(Inputs.image, `'${withoutUserinfo(text)}' is not a valid URL.`);
    }
    try {
      urlCredentials(url);
    } catch {
      // Without the text: it holds the password.
      throw new InputError(
        Inputs.image,
        "the URL's user or password has a malformed %-escape; write % as %25.",
      );
    }
    const streamFile = /\/([^/]+)\.json$/i.exec(url.pathname);
    if (streamFile) return { kind: 'fcos', stream: streamFile[1]!, streamUrl: url.toString() };
    return { kind: 'url', url: url.toString() };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) {
    throw new InputError(
      Inputs.image,
      `unsupported scheme in '${withoutUserinfo(text)}': use docker://, https:// or a file path.`,
    );
  }
  const path = resolve(text);
  const kind = fileKind(path);
  if (kind !== 'file') {
    const what = {
      missing: `the file ${path} does not exist`,
      directory: `${path} is a directory`,
      other: `${path} is not a regular file`,
    }[kind];
    throw new InputError(
      Inputs.image,
      `${what}; give an image file (e.g. a .qcow2.zst), a docker:// reference or an https:// URL.`,
    );
  }
  return { kind: 'file', path };
}

/**
 * `text` without the `user:password@` of a URL, for a message about a URL that could not be parsed: nothing is
 * masked yet then, and the password is what the user least wants printed.
 */
function withoutUserinfo(text: string): string {
  return text.replace(/^(\s*[a-z][a-z0-9+.-]*:\/\/)[^/?#\\]*@/i, '$1');
}

/** An unreadable parent counts as missing, as it does for existsSync. */
function fileKind(path: string): 'file' | 'directory' | 'other' | 'missing' {
  let info;
  try {
    info = statSync(path, { throwIfNoEntry: false });
  } catch {
    return 'missing';
  }
  if (!info) return 'missing';
  return info.isFile() ? 'file' : info.isDirectory() ? 'directory' : 'other';
}

/**
 * What to mask of an image URL's `user:password@` before anything prints the input `text` (the download sends
 * them as Basic auth to the URL's own host): the parsed and decoded forms, and the password as `text` writes it.
 */
export function imageUrlSecrets(source: ImageSource, text: string): string[] {
  const url = source.kind === 'url' ? source.url : source.kind === 'fcos' ? source.streamUrl : undefined;
  const secrets = (url && urlCredentials(new URL(url))?.secrets) || [];
  if (!secrets.length) return [];
  // The URL parser escapes `=`, `;`, space and more in a password, so one that also holds a %-escape
  // (`abc%2Fdef=`) is written in the input as neither its parsed (`abc%2Fdef%3D`) nor its decoded form.
  const authority = /^\s*[a-z][a-z0-9+.-]*:\/\/([^/?#\\]*)/i.exec(text)?.[1] ?? '';
  const userinfo = authority.slice(0, Math.max(authority.lastIndexOf('@'), 0));
  const written = userinfo.includes(':') ? userinfo.slice(userinfo.indexOf(':') + 1) : '';
  return [...new Set([...secrets, ...(written ? [written] : [])])];
}

/**
 * The `image` input as text that is not masked may show it (the cache key, listed to anyone who can read the
 * repository; the job summary, a file beside the log): a URL without its `user:password@`, anything else as given.
 */
export function shownImageText(source: ImageSource, text: string): string {
  const url = source.kind === 'url' ? source.url : source.kind === 'fcos' ? source.streamUrl : undefined;
  return url && imageUrlSecrets(source, text).length ? withoutCredentials(url) : text;
}
