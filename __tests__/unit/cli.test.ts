import { describe, expect, it } from '@jest/globals';
import { actionHelp, parseArgs, runCli, withDefaults } from '../../src/cli/cli.js';
import { loadActionMetadata } from '../../src/core/action-metadata.js';
import { InputError } from '../../src/core/inputs.js';

const prune = loadActionMetadata('prune-simplestreams');

function capture() {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (l: string) => out.push(l), err: (l: string) => err.push(l) }, out, err };
}

describe('parseArgs', () => {
  it('takes --name value, --name=value, bare and negated booleans, repeats as a list', () => {
    const p = parseArgs(prune, [
      '--path',
      '/srv',
      '--keep-versions=2',
      '--dry-run',
      '--no-keep-broken',
      '--products',
      'ubuntu:*',
      '--products',
      'debian:*',
      '--verbose',
    ]);
    expect(Object.fromEntries(p.values)).toEqual({
      path: '/srv',
      'keep-versions': '2',
      'dry-run': 'true',
      'keep-broken': 'false',
      products: 'ubuntu:*\ndebian:*',
    });
    expect(p.globals.get('verbose')).toBe('true');
  });

  it('a boolean flag followed by another flag means true', () => {
    expect(parseArgs(prune, ['--dry-run', '--path', '/x']).values.get('dry-run')).toBe('true');
  });

  it('rejects unknown flags and missing values, naming them', () => {
    expect(() => parseArgs(prune, ['--keep', '2'])).toThrow(InputError);
    expect(() => parseArgs(prune, ['--keep', '2'])).toThrow("Input 'keep': is not an input of");
    expect(() => parseArgs(prune, ['--path'])).toThrow("Input 'path': needs a value");
    expect(() => parseArgs(prune, ['stray'])).toThrow(/unexpected argument/);
  });

  it('fills defaults from action.yml for what was not given', () => {
    const merged = withDefaults(prune, new Map([['keep-versions', '5']]));
    expect(merged.get('keep-versions')).toBe('5');
    expect(merged.get('grace-period')).toBe('1h');
    expect(merged.has('path')).toBe(false);
  });
});

describe('runCli', () => {
  it('push-multi-tag --help lists the inputs from its action.yml', async () => {
    const c = capture();
    expect(await runCli(['push-multi-tag', '--help'], c.io)).toBe(0);
    const text = c.out.join('\n');
    const meta = loadActionMetadata('push-multi-tag');
    for (const input of Object.keys(meta.inputs)) expect(text).toContain(`--${input}`);
    expect(text).toContain('--concurrency (default: 4)');
    expect(text).toBe(actionHelp('push-multi-tag', meta));
  });

  it('exits 2 on bad input and names the input', async () => {
    const c = capture();
    expect(await runCli(['prune-simplestreams', '--path', '/x', '--keep-versions', '0'], c.io)).toBe(2);
    expect(c.err).toContain("error: Input 'keep-versions': must be at least 1, got 0.");
  });

  it('exits 2 on an unknown action or flag, and prints usage without arguments', async () => {
    expect(await runCli(['frobnicate'], capture().io)).toBe(2);
    expect(await runCli(['prune-simplestreams', '--nope', '1'], capture().io)).toBe(2);
    const c = capture();
    expect(await runCli([], c.io)).toBe(2);
    expect(c.out.join('\n')).toContain('usage: image-ci <action>');
    expect(await runCli(['--help'], capture().io)).toBe(0);
  });
});
