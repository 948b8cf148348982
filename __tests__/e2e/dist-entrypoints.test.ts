import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BUILT_METADATA_FILE } from '../../src/core/action-metadata.js';
import { REPO_ROOT, runAction } from '../support/harness.js';
import { generateLayout } from '../support/oci-layout.js';
import { startProxy } from '../support/proxy.js';
import { startRegistry } from '../support/registry.js';

const CLI = join(REPO_ROOT, 'dist/cli.js');

interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI without blocking this process (the test's servers must keep answering). */
function cli(args: string[], options: { env?: NodeJS.ProcessEnv; stdin?: string } = {}): Promise<CliRun> {
  return new Promise((resolve) => {
    const child = execFile(
      process.execPath,
      [CLI, ...args],
      { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '', ...options.env }, timeout: 120_000 },
      (error, stdout, stderr) => resolve({ code: error ? ((error.code as number) ?? 1) : 0, stdout, stderr }),
    );
    child.stdin?.end(options.stdin ?? '');
  });
}

/** The CLI's promise: stdout holds only `name=value` output lines. */
const OUTPUT_LINE = /^[a-z][a-z0-9-]*=/;

describe('dist entry points as the runner and a shell start them', () => {
  it.each([
    ['push-multi-tag', 'repositories'],
    ['prune-simplestreams', 'path'],
  ])('%s main without a required input fails with ::error:: naming %s', async (action, input) => {
    const r = await runAction({ action, inputs: { source: 'oci:/nonexistent', tags: 'latest' } });
    expect(r.main.exitCode).not.toBe(0);
    expect(r.errors.join('\n')).toContain(`Input '${input}'`);
    expect(r.post === undefined || r.post.exitCode === 0).toBe(true);
  });

  it('the root action dispatches on `action` and refuses an unknown one', async () => {
    const bad = await runAction({
      mainScript: join(REPO_ROOT, 'dist/main.js'),
      postScript: join(REPO_ROOT, 'dist/post.js'),
      actionYml: join(REPO_ROOT, 'action.yml'),
      inputs: { action: 'deploy-everything' },
    });
    expect(bad.main.exitCode).toBe(2);
    expect(bad.errors[0]).toContain("Input 'action': must name one of");
    expect(bad.post?.exitCode).toBe(0);

    const dispatched = await runAction({
      mainScript: join(REPO_ROOT, 'dist/main.js'),
      actionYml: join(REPO_ROOT, 'action.yml'),
      inputs: { action: 'prune-simplestreams', 'keep-versions': '0', path: '/nonexistent' },
    });
    expect(dispatched.main.exitCode).toBe(2);
    expect(dispatched.errors).toEqual(["Input 'keep-versions': must be at least 1, got 0."]);
  });

  it.each(['constructor', '__proto__'])(
    'the root action refuses `action: %s` (a name every object has) as it refuses any unknown one',
    async (name) => {
      const r = await runAction({
        mainScript: join(REPO_ROOT, 'dist/main.js'),
        postScript: join(REPO_ROOT, 'dist/post.js'),
        actionYml: join(REPO_ROOT, 'action.yml'),
        inputs: { action: name },
      });
      expect(r.errors).toEqual([expect.stringContaining(`Input 'action': must name one of`)]);
      expect(r.main.exitCode).toBe(2);
      expect(r.post?.exitCode).toBe(0);
    },
  );

  it('image-ci <action> --help prints the inputs of its action.yml', () => {
    const text = execFileSync(
      process.execPath,
      [join(REPO_ROOT, 'dist/cli.js'), 'push-multi-tag', '--help'],
      {
        encoding: 'utf8',
      },
    );
    expect(text).toContain('--repositories (required)');
    expect(text).toContain('--chunk-size (default: 0)');
  });

  it('a damaged dist/actions.json (a cut-short install) leaves the CLI on its action.yml files: same --help', () => {
    const copy = mkdtempSync(join(tmpdir(), 'ici-cli-copy-'));
    try {
      for (const part of ['dist', 'actions', 'action.yml', 'package.json']) {
        cpSync(join(REPO_ROOT, part), join(copy, part), { recursive: true });
      }
      const json = join(copy, 'dist', BUILT_METADATA_FILE);
      writeFileSync(json, readFileSync(json, 'utf8').slice(0, 500));
      const help = (root: string) =>
        spawnSync(process.execPath, [join(root, 'dist/cli.js'), 'push-multi-tag', '--help'], {
          encoding: 'utf8',
        });
      const damaged = help(copy);
      expect(damaged.stderr).toBe('');
      expect(damaged.status).toBe(0);
      expect(damaged.stdout).toBe(help(REPO_ROOT).stdout);
    } finally {
      rmSync(copy, { recursive: true, force: true });
    }
  });

  it('the CLI exits 2 on bad input with the message on stderr', () => {
    const r = spawnSync(
      process.execPath,
      [join(REPO_ROOT, 'dist/cli.js'), 'prune-simplestreams', '--path', '/x', '--verify', 'md5'],
      { encoding: 'utf8' },
    );
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("Input 'verify': must be one of size, sha256, none; got 'md5'.");
  });

  it('a bare number for a duration exits 2 and asks for a unit', async () => {
    const r = await cli(['prune-simplestreams', '--path', '/nonexistent', '--grace-period', '2']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("Input 'grace-period': '2' has no unit; write 2s, 2m, 2h or 2d.");
  });
});

describe('the CLI on stdout and argv', () => {
  let work: string;
  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'ici-cli-e2e-'));
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  it("preseed from a URL: stdout holds only name=value lines; the download's progress goes to the log", async () => {
    const disk = randomBytes(64 * 1024);
    const server = createServer((_req, res) =>
      res.writeHead(200, { 'content-length': disk.length }).end(disk),
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fcos-qemu.x86_64.qcow2.zst`;
    const runnerTemp = mkdtempSync(join(work, 'temp-'));
    try {
      const r = await cli(['preseed-podman-vm', '--image', url, '--no-cache', '--verbose'], {
        env: { RUNNER_TEMP: runnerTemp, HOME: mkdtempSync(join(work, 'home-')), XDG_DATA_HOME: '' },
      });
      expect(r.stderr).not.toMatch(/^error:/m);
      expect(r.code).toBe(0);
      const lines = r.stdout.split('\n').filter(Boolean);
      expect(lines.filter((l) => !OUTPUT_LINE.test(l))).toEqual([]);
      expect(lines.find((l) => l.startsWith('image-path='))).toContain(
        `=${join(runnerTemp, 'ici-pvm')}/url-`,
      );
      expect(r.stderr).toMatch(
        new RegExp(
          `Downloading ${url.replace(/[.]/g, '\\.')}: 64\\.0 KiB of 64\\.0 KiB \\(100%\\) at .*, done in `,
        ),
      );
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('--password-stdin: the push authenticates, and no process argv shows the password while it runs', async () => {
    const registry = await startRegistry({ auth: 'htpasswd' });
    const argvSnapshots: string[] = [];
    // The relay takes a snapshot of every process's argv as the CLI's first request arrives: the CLI is alive.
    const relay = await startProxy({
      target: registry.host,
      fault: ({ index }) => {
        if (argvSnapshots.length === 0 && index === 0) {
          argvSnapshots.push(execFileSync('ps', ['-ww', '-eo', 'args'], { encoding: 'utf8' }));
        }
        return undefined;
      },
    });
    const layout = generateLayout(join(work, 'layout'), { layers: [1000] });
    const pushArgs = (repository: string) => [
      'push-multi-tag',
      ...['--source', layout.transportRef, '--repositories', `${relay.host}/${repository}`, '--tags', 'v1'],
      ...['--insecure-registries', relay.host, '--username', registry.username!],
    ];
    try {
      const r = await cli([...pushArgs('stdin/app'), '--password-stdin'], {
        stdin: `${registry.password!}\n`,
      });
      expect(r.stderr).not.toMatch(/^(error|warning):/m);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain(`digest=${layout.digest}`);
      expect(argvSnapshots).toHaveLength(1);
      expect(argvSnapshots[0]).toContain('--password-stdin');
      expect(argvSnapshots[0]).not.toContain(registry.password!);

      // The documented variable works the same way.
      const viaEnv = await cli(pushArgs('env/app'), { env: { IMAGE_CI_PASSWORD: registry.password! } });
      expect(viaEnv.code).toBe(0);
      expect(viaEnv.stderr).not.toMatch(/^(error|warning):/m);
    } finally {
      await relay.stop();
      await registry.stop();
    }
  });
});
