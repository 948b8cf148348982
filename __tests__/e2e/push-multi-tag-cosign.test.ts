/**
 * Signatures survive a promotion, checked by the real cosign (Debian trixie's, in the root the global set-up
 * mounts; bookworm ships none). An image is pushed to a staging docker-registry 2.8, signed and attested there
 * with a local key (no transparency log: the job has no internet), promoted by digest to production with
 * push-multi-tag, and `cosign verify` / `cosign verify-attestation` must pass at production. The same promotion
 * with `referrers: false` is the control: there cosign must find nothing.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ExecResult } from '../../src/core/exec.js';
import { runAction } from '../support/harness.js';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { podmanVersions, requireAvailable, runWith, type PodmanVariant } from '../support/podman-matrix.js';
import { startRegistry, type RegistryService } from '../support/registry.js';
import { runSharedDir } from '../support/run-dir.js';

const PREDICATE_TYPE = 'https://example.com/image-ci/test-report/v1';

let work: string;
let image: GeneratedLayout;
let root: PodmanVariant;
const registries: RegistryService[] = [];

beforeAll(async () => {
  root = podmanVersions().find((v) => v.root !== '/')!;
  requireAvailable(root);
  // Inside the run's shared dir: the root sees it at the same path.
  work = mkdtempSync(join(runSharedDir(), 'cosign-'));
  image = generateLayout(join(work, 'image'), { layers: [20_000] });
  registries.push(...(await Promise.all([startRegistry(), startRegistry(), startRegistry()])));
  writeFileSync(join(work, 'predicate.json'), JSON.stringify({ suite: 'e2e', passed: 42 }));
  await cosign(['generate-key-pair', '--output-key-prefix', join(work, 'release')]);
});
afterAll(async () => {
  await Promise.all(registries.splice(0).map((r) => r.stop()));
  if (work) rmSync(work, { recursive: true, force: true });
});

/** cosign with no keyless, no transparency log, plain-http registries on 127.0.0.1. */
function cosign(args: string[], allowFailure = false): Promise<ExecResult> {
  return runWith(root, 'cosign', args, {
    env: { HOME: work, COSIGN_PASSWORD: '', PATH: '/usr/bin:/bin', TUF_ROOT: join(work, 'tuf') },
    cwd: work,
    allowFailure,
    timeoutMs: 60_000,
  });
}

const key = () => join(work, 'release.key');
const pub = () => join(work, 'release.pub');
const http = ['--allow-insecure-registry', '--allow-http-registry'];

async function promote(staging: string, production: string, referrers: boolean): Promise<void> {
  const r = await runAction({
    action: 'push-multi-tag',
    inputs: {
      source: `docker://${staging}/app@${image.digest}`,
      repositories: `${production}/app`,
      tags: '1.0.0, latest',
      'tls-verify': 'false',
      referrers: String(referrers),
    },
  });
  expect({ code: r.main.exitCode, errors: r.errors }).toEqual({ code: 0, errors: [] });
}

describe("[real cosign from the trixie root] a promotion carries cosign's signature and attestation", () => {
  it('cosign verify and verify-attestation pass at production; with referrers: false they find nothing', async () => {
    const [staging, production, control] = registries.map((r) => r.host) as [string, string, string];
    const pushed = await runAction({
      action: 'push-multi-tag',
      inputs: {
        source: `oci:${image.dir}`,
        repositories: `${staging}/app`,
        tags: 'rc',
        'tls-verify': 'false',
      },
    });
    expect(pushed.main.exitCode).toBe(0);
    const signed = `${staging}/app@${image.digest}`;
    await cosign(['sign', '--key', key(), '--tlog-upload=false', '--yes', ...http, signed]);
    await cosign([
      'attest',
      '--key',
      key(),
      '--predicate',
      join(work, 'predicate.json'),
      '--type',
      PREDICATE_TYPE,
      '--tlog-upload=false',
      '--yes',
      ...http,
      signed,
    ]);
    const verifyAt = (host: string, what: 'verify' | 'verify-attestation') =>
      cosign(
        [
          what,
          '--key',
          pub(),
          '--insecure-ignore-tlog=true',
          ...(what === 'verify-attestation' ? ['--type', PREDICATE_TYPE] : []),
          ...http,
          `${host}/app:1.0.0`,
        ],
        true,
      );

    await promote(staging, production, true);
    for (const what of ['verify', 'verify-attestation'] as const) {
      const r = await verifyAt(production, what);
      expect({ what, code: r.exitCode, err: r.exitCode === 0 ? '' : r.stderr }).toEqual({
        what,
        code: 0,
        err: '',
      });
      // cosign prints the verified payloads: they name the promoted digest.
      expect(r.stdout).toContain(what === 'verify' ? image.digest : 'payload');
    }

    await promote(staging, control, false);
    for (const what of ['verify', 'verify-attestation'] as const) {
      const r = await verifyAt(control, what);
      expect(r.exitCode).not.toBe(0);
      expect(r.stderr).toMatch(/no (matching )?(signatures|attestations)/i);
    }
  }, 180_000);
});
