import { describe, expect, it } from '@jest/globals';
import { join } from 'node:path';
import { parseFileCommands, REPO_ROOT, runAction, secretOnlyAfterMask } from '../support/harness.js';

const fixture = join(REPO_ROOT, '__tests__/fixtures/echo-action');
const run = (inputs: Record<string, string>) =>
  runAction({
    mainScript: join(fixture, 'main.mjs'),
    postScript: join(fixture, 'post.mjs'),
    actionYml: join(fixture, 'action.yml'),
    inputs,
  });

describe('runner harness on the echo fixture action', () => {
  it('applies action.yml defaults and reads outputs, state, env, path, summary and annotations', async () => {
    const r = await run({});
    expect(r.main.exitCode).toBe(0);
    expect(r.outputs).toEqual({ greeting: 'hello', multiline: 'line one\nline two' });
    expect(r.main.state).toEqual({ started: 'yes' });
    expect(r.exportedEnv).toEqual({ FIXTURE_VAR: 'exported' });
    expect(r.main.addedPaths).toEqual(['/opt/fixture/bin']);
    expect(r.main.summary).toBe('| a | b |\n');
    expect(r.warnings).toEqual(['a warning']);
    expect(r.errors).toEqual([]);
  });

  it('hands state and exported env to post', async () => {
    const r = await run({ greeting: 'hi' });
    expect(r.outputs.greeting).toBe('hi');
    expect(r.post?.exitCode).toBe(0);
    expect(r.post?.lines.map((l) => l.text)).toContain('post saw state=yes env=exported');
  });

  it('passes inputs with spaces in their names and records masks in order', async () => {
    const r = await run({ 'secret value': 's3cr3t-token' });
    expect(r.masks).toEqual(['s3cr3t-token']);
    expect(secretOnlyAfterMask(r.main, 's3cr3t-token')).toBe(true);
  });

  it('reports a failed main and still runs post', async () => {
    const r = await run({ fail: 'true' });
    expect(r.main.exitCode).toBe(1);
    expect(r.errors).toEqual(['failed on purpose']);
    expect(r.post?.exitCode).toBe(0);
  });

  it('detects a secret logged before its mask', () => {
    const step = {
      lines: [
        { stream: 'stdout' as const, text: 'token=abc' },
        { stream: 'stdout' as const, text: '::add-mask::abc' },
      ],
    };
    expect(secretOnlyAfterMask(step as never, 'abc')).toBe(false);
  });

  it('parses heredoc and plain file commands', () => {
    expect(parseFileCommands('a=1\nb<<EOF_X\nx\ny\nEOF_X\n')).toEqual([
      ['a', '1'],
      ['b', 'x\ny'],
    ]);
    expect(() => parseFileCommands('b<<E\nnever closed')).toThrow(/unterminated/);
  });
});
