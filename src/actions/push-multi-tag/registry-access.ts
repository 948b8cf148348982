/**
 * How push-multi-tag reaches each registry: the credential (credentials.ts) and TLS as podman and skopeo decide
 * it (core/oci/tls.ts: certs.d trust and client certificates; `tls-verify: false` or `insecure-registries` for
 * https without verification, or plain http when that is all the registry speaks). A `docker://` source gets
 * the same rules through skopeo's flags, and a private auth file holding its one credential, if it has one.
 */
import type { Credential } from '../../core/oci/credential.js';
import { createIsolatedAuth, type IsolatedAuth } from './auth-files.js';
import type { Host } from '../../core/host.js';
import type { RegistryClientOptions } from '../../core/oci/client.js';
import { parseReference } from '../../core/oci/reference.js';
import type { RemoteSourceAccess } from './source.js';
import { findRegistryTls, type RegistryTls } from '../../core/oci/tls.js';
import { ActionError, errorMessage } from '../../core/run.js';
import { resolveCredentials } from './credentials.js';
import type { PushInputs } from './inputs.js';

export type RegistryAccess = Pick<RegistryClientOptions, 'credentials' | 'tlsVerify' | 'tls'>;

export interface PushAccess {
  /** RegistryClient options per destination registry. */
  destinations: Map<string, RegistryAccess>;
  /** skopeo's options for a `docker://` source (tls-verify alone for other sources). */
  source: RemoteSourceAccess;
  /** RegistryClient options for a `docker://` source's registry (its referrers are read directly). */
  sourceRegistry?: RegistryAccess;
  /** Removes the source's private auth file (post removes it too, should main not get there). */
  release(): Promise<void>;
}

function verifies(inputs: PushInputs, registry: string): boolean {
  return inputs.tlsVerify && !inputs.insecureRegistries.includes(registry);
}

async function registryTls(host: Host, registry: string): Promise<RegistryTls | undefined> {
  let tls: RegistryTls | undefined;
  try {
    tls = await findRegistryTls(registry);
  } catch (error) {
    throw new ActionError(`${registry}: cannot use its TLS certificates: ${errorMessage(error)}`);
  }
  if (tls) {
    const client = tls.clientCert ? `, client certificate ${tls.clientCert.certFile}` : '';
    host.info(`${registry}: TLS from ${tls.certDir} (${tls.ca.length} CA certificate(s)${client}).`);
  }
  return tls;
}

async function access(
  host: Host,
  inputs: PushInputs,
  registry: string,
  credentials: Credential | undefined,
): Promise<RegistryAccess> {
  const tlsVerify = verifies(inputs, registry);
  if (!tlsVerify) {
    host.info(`${registry}: TLS is not verified (falls back to plain http if that is all it speaks).`);
  }
  const tls = await registryTls(host, registry);
  return { credentials, tlsVerify, ...(tls ? { tls } : {}) };
}

export async function preparePushAccess(host: Host, inputs: PushInputs): Promise<PushAccess> {
  const sourceRef = inputs.source.transport === 'docker' ? parseReference(inputs.source.location) : undefined;
  const credentials = await resolveCredentials(host, inputs, sourceRef);
  const destinations = new Map<string, RegistryAccess>();
  for (const [registry, credential] of credentials.destinations) {
    destinations.set(registry, await access(host, inputs, registry, credential));
  }
  if (!sourceRef) return { destinations, source: { tlsVerify: inputs.tlsVerify }, release: async () => {} };

  const shared = destinations.get(sourceRef.registry);
  const src = shared
    ? { ...shared, credentials: credentials.source }
    : await access(host, inputs, sourceRef.registry, credentials.source);
  let auth: IsolatedAuth | undefined;
  if (src.credentials) {
    auth = await createIsolatedAuth(host, [{ registry: sourceRef.registry, ...src.credentials }]);
  }
  return {
    destinations,
    sourceRegistry: src,
    source: {
      tlsVerify: src.tlsVerify ?? true,
      ...(auth ? { authFile: auth.authFile } : { anonymous: true }),
      ...(src.tls ? { certDir: src.tls.certDir } : {}),
    },
    release: async () => auth?.remove(),
  };
}
