/**
 * The registry client as the transport tests make it: plain http, a short backoff, a 10 s silence timeout
 * unless a test wants its own.
 */
import { RegistryClient, type RegistryClientOptions } from '../../src/core/oci/client.js';

export function testClient(host: string, extra: Partial<RegistryClientOptions> = {}): RegistryClient {
  return new RegistryClient({
    registry: host,
    insecure: true,
    retryBaseDelayMs: 10,
    timeoutMs: 10_000,
    ...extra,
  });
}
