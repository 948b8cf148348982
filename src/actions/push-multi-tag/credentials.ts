/** Which credential each destination registry gets: the username/password inputs, else the auth file's entry. */
import { findCredential, readAuthFile, type Credential } from '../../core/auth.js';
import { InputError } from '../../core/inputs.js';
import { Input, type Destination, type PushInputs } from './inputs.js';

export async function credentialsByRegistry(inputs: PushInputs): Promise<Map<string, Credential>> {
  const result = new Map<string, Credential>();
  if (inputs.username && inputs.password) {
    for (const d of inputs.repositories)
      result.set(d.registry, { username: inputs.username, password: inputs.password });
    return result;
  }
  if (!inputs.authFile) return result;
  let auths: Map<string, Credential>;
  try {
    auths = await readAuthFile(inputs.authFile);
  } catch (error) {
    throw new InputError(Input.authFile, `cannot read ${inputs.authFile}: ${(error as Error).message}`);
  }
  const first = new Map<string, Destination>();
  for (const d of inputs.repositories) if (!first.has(d.registry)) first.set(d.registry, d);
  for (const [registry, d] of first) {
    const found = findCredential(auths, registry, d.repository);
    if (found) result.set(registry, found);
  }
  return result;
}
