/** What the `image` input names: a registry reference, a URL, or a file already on this machine. */
import { existsSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { InputError } from '../../core/inputs.js';

export type ImageSource =
  { kind: 'registry'; reference: string } | { kind: 'url'; url: string } | { kind: 'file'; path: string };

export function classifyImage(text: string): ImageSource {
  if (text.startsWith('docker://')) {
    const reference = text.slice('docker://'.length);
    if (!reference) throw new InputError('image', 'a `docker://` reference needs a repository after it.');
    return { kind: 'registry', reference };
  }
  if (/^https?:\/\//i.test(text)) {
    try {
      return { kind: 'url', url: new URL(text).toString() };
    } catch {
      throw new InputError('image', `'${text}' is not a valid URL.`);
    }
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
