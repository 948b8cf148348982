/**
 * A node of its own trusting a test's CA: NODE_EXTRA_CA_CERTS is read only when node starts, so code that
 * verifies TLS with node's default trust (fetch, https, tls) can be pointed at a test server only in a new process.
 */
import { spawn } from 'node:child_process';

/** Runs `source` (an ES module) with `args` as process.argv[1…]; resolves with what it prints, trimmed. */
export function nodeTrusting(
  caCert: string,
  source: string,
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<string> {
  return new Promise<string>((done, fail) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', source, ...args], {
      env: { ...process.env, NODE_EXTRA_CA_CERTS: caCert, ...env },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let text = '';
    child.stdout.on('data', (d: Buffer) => (text += d.toString()));
    child.on('close', (code) => (code === 0 ? done(text.trim()) : fail(new Error(`exit ${code}`))));
  });
}
