/**
 * The one rule for following a redirect by hand (the cache archive's ranged download, preseed's URL download and
 * its Fedora CoreOS stream): which answers are redirects, how many are followed, and which hops are refused.
 */
import { externalText } from './oci/response.js';
import type { ProxiedFetch } from './proxy-env.js';

export const REDIRECT_STATUSES: ReadonlySet<number> = new Set([301, 302, 303, 307, 308]);

/**
 * As many as a storage front end needs (a GitHub release asset or a signed archive URL takes one); fetch follows
 * 20, @actions/http-client 50.
 */
export const MAX_REDIRECTS = 10;

/**
 * Why the hop from `from` to `to` is not taken, as the end of "… redirected <reason>", or undefined to take it.
 * Only http(s); and never from https to plain http, as @actions/http-client (the cache library's and tool-cache's
 * client) refuses it: what the https URL was signed or trusted to protect would go in the clear, where it can be
 * swapped on the way.
 */
export function refusedRedirect(from: URL, to: URL): string | undefined {
  if (to.protocol !== 'https:' && to.protocol !== 'http:') return `to a ${externalText(to.protocol, 20)} URL`;
  if (from.protocol === 'https:' && to.protocol === 'http:') {
    return `from https to plain http (${externalText(to.origin, 100)})`;
  }
  return undefined;
}

/** A redirect `fetchFollowing` did not take; the message is "<origin> redirected <reason>". */
export class RedirectNotFollowed extends Error {
  constructor(
    readonly from: URL,
    readonly reason: string,
    /** More than MAX_REDIRECTS hops, rather than a refused one. */
    readonly tooMany: boolean,
  ) {
    super(`${externalText(from.origin, 100)} redirected ${reason}`);
    this.name = 'RedirectNotFollowed';
  }
}

/**
 * The answer at the end of `url`'s redirects, followed by hand under the rule above: fetch follows a hop from
 * https to plain http (the Fetch standard allows it), and drops the Authorization header at a hop to another
 * origin without sending it again when a later hop comes back. `authorization` goes to every request on `url`'s
 * own origin and never to another. A redirect's target may be a signed URL: errors name its origin only.
 */
export async function fetchFollowing(
  fetch: ProxiedFetch,
  url: string,
  options: { signal: AbortSignal; headers?: Record<string, string>; authorization?: string },
): Promise<Response> {
  const origin = new URL(url).origin;
  let at = new URL(url);
  for (let redirects = 0; ; redirects++) {
    const headers = { ...options.headers };
    if (options.authorization && at.origin === origin) headers.authorization = options.authorization;
    const response = await fetch(at, { signal: options.signal, redirect: 'manual', headers });
    const location = response.headers.get('location');
    if (!REDIRECT_STATUSES.has(response.status) || location === null) return response;
    await response.body?.cancel().catch(() => undefined);
    if (redirects === MAX_REDIRECTS)
      throw new RedirectNotFollowed(at, `more than ${MAX_REDIRECTS} times`, true);
    const next = URL.canParse(location, at.href) ? new URL(location, at) : undefined;
    const refused = next ? refusedRedirect(at, next) : 'to an invalid URL';
    if (!next || refused) throw new RedirectNotFollowed(at, refused!, false);
    at = next;
  }
}
