import { describe, expect, it } from '@jest/globals';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  foreignCommands,
  parseFileCommands,
  REPO_ROOT,
  runAction,
  runnerTempLeftovers,
  secretOnlyAfterMask,
  workflowCommands,
  type LogLine,
} from '../support/harness.js';

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
    expect(runnerTempLeftovers(r)).toEqual([]);
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

  it('runnerTempLeftovers names what main and post left in RUNNER_TEMP, except declared cache paths', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ici-harness-'));
    try {
      const main = join(dir, 'main.mjs');
      const post = join(dir, 'post.mjs');
      const make = (name: string) => `mkdirSync(process.env.RUNNER_TEMP + '/${name}', { recursive: true });`;
      writeFileSync(
        main,
        [
          "import { mkdirSync } from 'node:fs';",
          make('ici-cache-data'),
          make('ici-a1b2c3'),
          make('ici-removed'),
        ].join('\n'),
      );
      writeFileSync(
        post,
        `import { rmSync } from 'node:fs'; rmSync(process.env.RUNNER_TEMP + '/ici-removed', { recursive: true });`,
      );
      const runnerTemp = join(dir, 'temp');
      // Every runAction checks the rule after post, unless told which cache paths may stay.
      await expect(
        runAction({ mainScript: main, postScript: post, runnerTemp: join(dir, 'checked') }),
      ).rejects.toThrow(/^leftovers rule: main and post left ici-a1b2c3, ici-cache-data in RUNNER_TEMP /);
      await expect(
        runAction({
          mainScript: main,
          postScript: post,
          runnerTemp: join(dir, 'declared'),
          keepInRunnerTemp: ['ici-cache-data'],
        }),
      ).rejects.toThrow(/^leftovers rule: main and post left ici-a1b2c3 in RUNNER_TEMP /);
      const first = await runAction({
        mainScript: main,
        postScript: post,
        runnerTemp,
        keepInRunnerTemp: 'unchecked',
      });
      expect(runnerTempLeftovers(first, ['ici-cache-data']).sort()).toEqual(['ici-a1b2c3']);
      expect(runnerTempLeftovers(first, [join(runnerTemp, 'ici-cache-data', 'x')]).sort()).toEqual([
        'ici-a1b2c3',
      ]);
      expect(runnerTempLeftovers(first).sort()).toEqual(['ici-a1b2c3', 'ici-cache-data']);
      // What was there before main is not the action's.
      const again = await runAction({ mainScript: main, postScript: post, runnerTemp });
      expect(runnerTempLeftovers(again)).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("workflowCommands: the runner's command parser, modelled", () => {
  const lines = (...texts: string[]): LogLine[] => texts.map((text) => ({ stream: 'stdout', text }));
  const names = (...texts: string[]) => workflowCommands(lines(...texts)).map((c) => c.name);

  it('reads ::name:: after leading blanks, the legacy ##[name] anywhere, names in any case, CR as a line break', () => {
    expect(
      names('::add-mask::x', '  \t::Set-Output name=a::b', 'text ##[save-state name=x]y', 'a\r::error::e'),
    ).toEqual(['add-mask', 'set-output', 'save-state', 'error']);
    expect(names('plain', 'a ::debug:: in the middle', '::', ':: ::', '##[unclosed')).toEqual([]);
    expect(workflowCommands(lines('::warning::a%0Ab%25')).map((c) => c.data)).toEqual(['a\nb%']);
  });

  it('ignores everything between ::stop-commands::<token> and ::<token>::, as the runner does', () => {
    expect(
      names('::stop-commands::T0k', '::add-mask::x', '##[error]y', '::other::', '::t0K::', '::add-mask::z'),
    ).toEqual(['stop-commands', 'resume-commands', 'add-mask']);
  });

  it('foreignCommands lists what the actions never write themselves', () => {
    const step = {
      lines: lines('::debug::d', '::set-output name=x::y', '::group::g', '::endgroup::', '##[set-env]'),
    };
    expect(foreignCommands(step).map((c) => c.name)).toEqual(['set-output', 'set-env']);
  });
});
