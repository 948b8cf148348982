/**
 * What the `image` input names: a registry reference, a Fedora CoreOS stream (podman 4's default source), a
 * URL, or a file already on this machine.
 */
import { existsSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { InputError } from '../../core/inputs.js';
import { FCOS_STREAMS, fcosStreamUrl } from './fcos-stream.js';

export type ImageSource =
  | { kind: 'registry'; reference: string }
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
    if (!reference) throw new InputError('image', 'a `docker://` reference needs a repository after it.');
    return { kind: 'registry', reference };
  }
  if (/^https?:\/\//i.test(text)) {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new InputError('image', `'${text}' is not a valid URL.`);
    }
    const streamFile = /\/([^/]+)\.json$/i.exec(url.pathname);
    if (streamFile) return { kind: 'fcos', stream: streamFile[1]!, streamUrl: url.toString() };
    return { kind: 'url', url: url.toString() };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) {
    throw new InputError('image', `unsupported scheme in '${text}': use docker://, https:// or a file path.`);
  }
  const path = resolve(text);
  if (!existsSync(path) || !statSync(path).isFile()) {
    throw new InputError(
      'image',
      `the file ${path} does not exist; give an existing image file, a docker:// reference or an https:// URL.`,
    );
  }
  return { kind: 'file', path };
}
