/**
 * push-multi-tag as the runner runs it: main and post are separate processes, state passes only through
 * GITHUB_STATE, and main cannot read STATE_* (the runner sets those for post only). Whatever main exported
 * into its scratch dir must be gone after main and post; nothing else may be left in RUNNER_TEMP.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runAction } from '../support/harness.js';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { startRegistry, type RegistryService } from '../support/registry.js';

describe('push-multi-tag in runner mode leaves nothing in RUNNER_TEMP', () => {
  let work: string;
  let layout: GeneratedLayout;
  let registry: RegistryService;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'ici-push-runner-'));
    layout = generateLayout(join(work, 'layout'), { layers: [300_000, 100_000] });
    registry = await startRegistry();
  });
  afterAll(async () => {
    await registry?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  const push = (source: string, repository: string, extra: Record<string, string> = {}) =>
    runAction({
      action: 'push-multi-tag',
      inputs: {
        source,
        repositories: `${registry.host}/${repository}`,
        tags: '1.0, latest',
        'insecure-registries': registry.host,
        ...extra,
      },
    });

  it('an oci-archive source, unpacked into a scratch layout by main, is removed by the end of main', async () => {
    const archive = join(work, 'image.tar');
    execFileSync('tar', ['-cf', archive, '-C', layout.dir, '.']);
    const r = await push(`oci-archive:${archive}:${layout.ref}`, 'runner/archive');
    expect(r.errors).toEqual([]);
    expect(r.main.exitCode).toBe(0);
    expect(r.outputs.digest).toBe(layout.digest);
  });

  it('a docker:// source, exported by skopeo into a scratch layout, is removed too', async () => {
    const seeded = await push(layout.transportRef, 'runner/seed');
    expect(seeded.main.exitCode).toBe(0);
    const r = await push(`docker://${registry.host}/runner/seed:1.0`, 'runner/copy', {
      'tls-verify': 'false',
    });
    expect(r.errors).toEqual([]);
    expect(r.main.exitCode).toBe(0);
    expect(r.outputs.digest).toBe(layout.digest);
  });
});
