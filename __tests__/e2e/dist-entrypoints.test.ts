import { describe, expect, it } from '@jest/globals';
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT, runAction } from '../support/harness.js';

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

  it('the CLI exits 2 on bad input with the message on stderr', () => {
    const r = spawnSync(
      process.execPath,
      [join(REPO_ROOT, 'dist/cli.js'), 'prune-simplestreams', '--path', '/x', '--verify', 'md5'],
      { encoding: 'utf8' },
    );
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("Input 'verify': must be one of size, sha256, none; got 'md5'.");
  });
});
