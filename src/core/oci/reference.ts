/**
 * Image references the way docker and containers/image spell them: `[host[:port]/]path[:tag][@digest]`.
 * A first component is a registry host only when it looks like one (has a dot or a port, or is localhost);
 * otherwise the reference is on Docker Hub, where one-component names live under `library/`.
 */

export interface ImageReference {
  /** host[:port]; Docker Hub is normalised to `docker.io`. */
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
}

export const DOCKER_HUB = 'docker.io';
/** The host that actually serves Docker Hub's registry API. */
const DOCKER_HUB_API = 'registry-1.docker.io';

const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const DIGEST_RE = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$/;
const PATH_COMPONENT_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const HOST_RE =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::\d{1,5})?$/;

export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

export function isValidDigest(digest: string): boolean {
  return DIGEST_RE.test(digest);
}

export function looksLikeHost(component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost';
}

function normaliseRegistry(host: string): string {
  const lower = host.toLowerCase();
  return lower === 'index.docker.io' || lower === DOCKER_HUB_API ? DOCKER_HUB : lower;
}

/** The host to open connections to for a registry name (Docker Hub's API lives on another host). */
export function registryApiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API : registry;
}

/** Splits `host[:port]/path` (no tag, no digest) into registry and repository; throws on anything else. */
export function parseRepository(text: string): { registry: string; repository: string } {
  const ref = parseReference(text);
  if (ref.tag !== undefined || ref.digest !== undefined) {
    throw new Error(`'${text}' names a tag or digest; give only the repository (host[:port]/path).`);
  }
  return { registry: ref.registry, repository: ref.repository };
}

export function parseReference(text: string): ImageReference {
  const input = text.trim();
  if (!input) throw new Error('an image reference is empty.');
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(input)) {
    throw new Error(`'${input}' has a URL scheme; write an image reference like host/path:tag.`);
  }
  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!isValidDigest(digest)) throw new Error(`'${input}' has an invalid digest '${digest}'.`);
  }
  let registry = DOCKER_HUB;
  const slash = rest.indexOf('/');
  if (slash > 0 && looksLikeHost(rest.slice(0, slash))) {
    const host = rest.slice(0, slash);
    if (!HOST_RE.test(host)) throw new Error(`'${input}' has an invalid registry host '${host}'.`);
    registry = normaliseRegistry(host);
    rest = rest.slice(slash + 1);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon >= 0 && !rest.slice(colon).includes('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!isValidTag(tag)) {
      throw new Error(`'${input}' has an invalid tag '${tag}' (allowed: [A-Za-z0-9_][A-Za-z0-9._-]{0,127}).`);
    }
  }
  if (!rest) throw new Error(`'${input}' has no repository path.`);
  const components = rest.split('/');
  for (const c of components) {
    // As containers/image: a registry host may be upper-case (DNS is not case-sensitive), a repository not.
    if (!PATH_COMPONENT_RE.test(c) && PATH_COMPONENT_RE.test(c.toLowerCase())) {
      throw new Error(
        `'${input}' has an invalid repository path '${rest}': repository names must be lower-case (write '${rest.toLowerCase()}').`,
      );
    }
    if (!PATH_COMPONENT_RE.test(c)) {
      throw new Error(
        `'${input}' has an invalid repository path component '${c}' (lower-case letters, digits and . _ - separators).`,
      );
    }
  }
  if (registry === DOCKER_HUB && components.length === 1) rest = `library/${rest}`;
  if (rest.length > 255) throw new Error(`'${input}' has a repository path longer than 255 characters.`);
  const ref: ImageReference = { registry, repository: rest };
  if (tag !== undefined) ref.tag = tag;
  if (digest !== undefined) ref.digest = digest;
  return ref;
}

export function formatReference(ref: ImageReference): string {
  let text = `${ref.registry}/${ref.repository}`;
  if (ref.tag !== undefined) text += `:${ref.tag}`;
  if (ref.digest !== undefined) text += `@${ref.digest}`;
  return text;
}
