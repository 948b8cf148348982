/**
 * The one rule for following a redirect by hand (the cache archive's ranged download, preseed's URL download):
 * which answers are redirects, how many are followed, and which hops are refused.
 */
import { externalText } from './oci/response.js';

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
