/**
 * Text from outside the action cannot start a workflow command, whichever way it reaches the log: a registry's
 * index annotations, a registry's error body, a simplestreams product name and file name, a child process's
 * output. Each runs the built action (dist) as the runner does, main and post as separate processes, and reads
 * both steps' output with the runner's command parser modelled in the harness.
 */
import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { which } from '@actions/io';
import {
  foreignCommands,
  runAction,
  workflowCommands,
  type RunResult,
  type StepResult,
} from '../support/harness.js';
import { buildMachineOsLayout, publishMachineOs } from '../support/machine-os.js';
import { generateLayout } from '../support/oci-layout.js';
import { startRegistry, type RegistryService } from '../support/registry.js';
import { SimplestreamsRepo } from '../support/simplestreams-fixture.js';

/** Every command the payload tries to start carries data beginning with this marker. */
const MARKER = 'ICI-INJECTED';
/** LF, CR and the legacy `##[...]` form, each line trying a command that would hurt. */
const PAYLOAD =
  `\n::add-mask::${MARKER}-sha256` +
  `\n::set-output name=image-path::${MARKER}/evil` +
  `\r::save-state name=ici-auth-dir::${MARKER}/home` +
  `\n  ::stop-commands::${MARKER}` +
  `\n::error::${MARKER} forged annotation` +
  `\nx ##[set-env name=NODE_OPTIONS;]${MARKER}`;

/**
 * Commands the payload managed to start: a name the action never writes, or an allowed name whose data
 * begins with the marker (a forged mask, annotation or stop-commands). A legit error that quotes the hostile
 * text carries it escaped, after its own words.
 */
function injected(step: StepResult | undefined): string[] {
  if (!step) return [];
  const forged = workflowCommands(step.lines).filter((c) => c.data.startsWith(MARKER));
  return [...foreignCommands(step), ...forged].map((c) => c.text);
}

function expectNoInjection(r: RunResult): void {
  expect({ main: injected(r.main), post: injected(r.post) }).toEqual({ main: [], post: [] });
  // The hostile text did reach the log (else this proves nothing), and no forged output or state exists.
  expect(r.log).toContain(MARKER);
  expect(JSON.stringify([r.outputs, r.main.state])).not.toContain(MARKER);
}

/** `text` as a single-quoted printf format that prints it (real CR and LF included) and a final newline. */
function printfFormat(text: string): string {
  const escaped = text.replace(/\\/g, '\\\\').replace(/%/g, '%%').replace(/\n/g, '\\n').replace(/\r/g, '\\r');
  return `'${escaped}\\n'`;
}

let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'ici-hostile-'));
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('preseed-podman-vm: a machine-os index whose disk title annotation holds command lines', () => {
  let registry: RegistryService;
  beforeAll(async () => {
    registry = await startRegistry();
    const fake = buildMachineOsLayout(join(work, 'machine-os'), {
      disks: [['x86_64', 'qemu']],
      title: () => `disk.qcow2.zst${PAYLOAD}`,
    });
    await publishMachineOs(fake, registry.host, 'podman/machine-os', '5.3');
  });
  afterAll(() => registry?.stop());

  it('prints the title inertly in main and post; nothing but the cache dir is left in RUNNER_TEMP', async () => {
    const home = join(work, 'pvm-home');
    mkdirSync(home);
    const r = await runAction({
      action: 'preseed-podman-vm',
      inputs: { image: `docker://${registry.host}/podman/machine-os:5.3`, cache: 'false' },
      env: { XDG_DATA_HOME: undefined },
      home,
      keepInRunnerTemp: ['ici-pvm'],
    });
    expect(r.main.exitCode).toBe(0);
    expectNoInjection(r);
  });
});

describe('prune-simplestreams: a product name and a file name holding command lines', () => {
  it('prunes and reports them without starting a command', async () => {
    const root = join(work, 'simplestreams');
    const repo = new SimplestreamsRepo(root, 'flat');
    const product = `evil:1:default:amd64${PAYLOAD}`;
    repo.addVersion(product, '202401010000');
    repo.addVersion(product, '202402010000');
    // A file name must fit in 255 bytes: a shorter payload.
    repo.addOrphan(`images/upload\n::add-mask::${MARKER}\r::error::${MARKER}.squashfs`, 30 * 24 * 3_600_000);
    repo.write();
    const r = await runAction({
      action: 'prune-simplestreams',
      inputs: { path: root, 'keep-versions': '1' },
    });
    expect(r.main.exitCode).toBe(0);
    expect(r.outputs['removed-versions']).toBe('1');
    expectNoInjection(r);
  });
});

describe('push-multi-tag: hostile registry answers and child output', () => {
  let layout: ReturnType<typeof generateLayout>;
  beforeAll(() => {
    // Uncompressed layers + `compression` make the action run skopeo, whose output it logs.
    layout = generateLayout(join(work, 'layout'), { layers: [2000], compress: false });
  });

  it('an error body full of command lines fails the step without starting one', async () => {
    // Blobs are missing (404 to HEAD); the upload is refused with an OCI error body the client reports.
    const server: Server = createServer((req, res) => {
      if (req.method === 'HEAD') {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(403, { 'Content-Type': 'application/json', 'X-Hostile': `x ##[add-mask]${MARKER}` });
      res.end(JSON.stringify({ errors: [{ code: 'DENIED', message: `${MARKER} denied${PAYLOAD}` }] }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const r = await runAction({
        action: 'push-multi-tag',
        inputs: {
          source: layout.transportRef,
          repositories: `${host}/evil/repo`,
          tags: 'latest',
          'insecure-registries': host,
        },
      });
      expect(r.main.exitCode).toBe(1);
      expectNoInjection(r);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  describe('skopeo behind a logging shim (prints hostile lines and its environment, then runs the real one)', () => {
    let registry: RegistryService;
    let shimDir: string;
    beforeAll(async () => {
      registry = await startRegistry({ auth: 'htpasswd' });
      const skopeo = await which('skopeo');
      if (!skopeo) throw new Error('skopeo is not installed');
      shimDir = join(work, 'shim');
      mkdirSync(shimDir);
      const shim = join(shimDir, 'skopeo');
      writeFileSync(
        shim,
        [
          '#!/bin/sh',
          'env > "$ICI_ENV_DUMP"',
          `printf ${printfFormat(`copying${PAYLOAD}`)}`,
          `printf ${printfFormat(`::warning::${MARKER} on stderr`)} >&2`,
          `exec ${skopeo} "$@"`,
          '',
        ].join('\n'),
      );
      chmodSync(shim, 0o755);
    });
    afterAll(() => registry?.stop());

    it('its output is logged inertly, and its environment holds no input and no secret', async () => {
      const envDump = join(work, 'skopeo-env.txt');
      const r = await runAction({
        action: 'push-multi-tag',
        inputs: {
          source: layout.transportRef,
          compression: 'gzip',
          repositories: `${registry.host}/app/one`,
          tags: 'latest',
          'insecure-registries': registry.host,
          username: registry.username!,
          password: registry.password!,
        },
        env: {
          PATH: `${shimDir}:${process.env.PATH}`,
          ICI_ENV_DUMP: envDump,
          ACTIONS_RUNTIME_TOKEN: 'runner-runtime-token-value',
        },
      });
      expect(r.errors).toEqual([]);
      expect(r.main.exitCode).toBe(0);
      expectNoInjection(r);

      const childEnv = readFileSync(envDump, 'utf8');
      expect(childEnv).toContain(`ICI_ENV_DUMP=${envDump}`);
      expect(childEnv).not.toMatch(/^INPUT_/m);
      expect(childEnv).not.toContain(registry.password!);
      expect(childEnv).not.toContain('runner-runtime-token-value');
    });
  });
});
