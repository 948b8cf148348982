import { afterEach, describe, expect, it } from '@jest/globals';
import { actionHelp, parseArgs, readPassword, runCli, withDefaults } from '../../src/cli/cli.js';
import { loadActionMetadata } from '../../src/core/action-metadata.js';
import { InputError, MapInputSource } from '../../src/core/inputs.js';
import { ACTIONS, ACTION_NAMES } from '../../src/actions/registry.js';

const prune = loadActionMetadata('prune-simplestreams');

function capture(stdin = '') {
  const out: string[] = [];
  const err: string[] = [];
  const io = {
    out: (l: string) => out.push(l),
    err: (l: string) => err.push(l),
    readStdin: async () => stdin,
  };
  return { io, out, err };
}

const push = loadActionMetadata('push-multi-tag');

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

  it('takes a value that starts with dashes (a key), but not the next flag as a value', () => {
    const rbe = loadActionMetadata('remote-build-env');
    const key = '-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----';
    expect(parseArgs(rbe, ['--ssh-key', key, '--mode', 'ssh']).values.get('ssh-key')).toBe(key);
    expect(() => parseArgs(prune, ['--path', '--dry-run'])).toThrow("Input 'path': needs a value");
    expect(() => parseArgs(prune, ['--path', '--no-dry-run'])).toThrow("Input 'path': needs a value");
  });

  it('takes --flag=false for true/false inputs, as podman does, and says how when given a separate value', () => {
    expect(parseArgs(prune, ['--dry-run=false', '--keep-broken=yes']).values).toEqual(
      new Map([
        ['dry-run', 'false'],
        ['keep-broken', 'yes'],
      ]),
    );
    expect(() => parseArgs(prune, ['--dry-run', 'false'])).toThrow(
      "Input 'false': unexpected argument; inputs are given as --<input> <value>. A true/false input takes its value after '=': --dry-run=false.",
    );
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

  it.each(['constructor', '__proto__', 'toString'])(
    "'%s' (a name every object has) is an unknown action, exit 2",
    async (name) => {
      const c = capture();
      expect(await runCli([name, '--help'], c.io)).toBe(2);
      expect(c.err.join('\n')).toContain(`error: unknown action '${name}'.`);
    },
  );
});

describe('the password (push-multi-tag) off the command line', () => {
  const saved = process.env.IMAGE_CI_PASSWORD;
  afterEach(() => {
    if (saved === undefined) delete process.env.IMAGE_CI_PASSWORD;
    else process.env.IMAGE_CI_PASSWORD = saved;
  });
  const read = (args: string[], stdin = '') => readPassword(push, parseArgs(push, args), capture(stdin).io);

  it('--password-stdin reads stdin without its final line break, as docker login does', async () => {
    expect(await read(['--password-stdin'], 's3cret\r\n')).toEqual({ value: 's3cret', from: 'stdin' });
    expect(await read(['--password-stdin', '--username', 'u'], 'two\nlines\n')).toEqual({
      value: 'two\nlines',
      from: 'stdin',
    });
  });

  it('IMAGE_CI_PASSWORD is used when no flag gives one; --password on argv still works', async () => {
    process.env.IMAGE_CI_PASSWORD = 'from-env';
    expect(await read([])).toEqual({ value: 'from-env', from: 'env' });
    expect(await read(['--password', 'on-argv'])).toEqual({ value: 'on-argv', from: 'argv' });
    expect(await read(['--password-stdin'], 'from-stdin\n')).toEqual({ value: 'from-stdin', from: 'stdin' });
  });

  it('refuses an empty stdin, both flags at once, and --password-stdin for an action without a password', async () => {
    await expect(read(['--password-stdin'], '\n')).rejects.toThrow(
      "Input 'password-stdin': stdin held no password.",
    );
    await expect(read(['--password-stdin', '--password', 'x'])).rejects.toThrow(
      /cannot be combined with --password/,
    );
    const prune = loadActionMetadata('prune-simplestreams');
    await expect(readPassword(prune, parseArgs(prune, ['--password-stdin']), capture().io)).rejects.toThrow(
      /takes no password/,
    );
  });

  it('a --password on argv warns, and the password is masked in every line', async () => {
    const c = capture();
    const code = await runCli(
      [
        'push-multi-tag',
        '--source',
        'oci:/nonexistent-hunter22',
        '--repositories',
        '127.0.0.1:9/a',
        '--tags',
        'x',
        '--username',
        'u',
        '--password',
        'hunter22',
      ],
      c.io,
    );
    expect(code).toBe(2);
    expect(c.err[0]).toMatch(/^warning: --password on the command line is visible to other users/);
    expect(c.err.join('\n')).toContain('/nonexistent-*** does not exist');
    expect(c.err.join('\n')).not.toContain('hunter22');
  });
});

describe('durations on the CLI', () => {
  it('a bare number is refused with exit 2, asking for a unit', async () => {
    const c = capture();
    expect(await runCli(['prune-simplestreams', '--path', '/nonexistent', '--grace-period', '2'], c.io)).toBe(
      2,
    );
    expect(c.err).toEqual(["error: Input 'grace-period': '2' has no unit; write 2s, 2m, 2h or 2d."]);
  });

  it("every action's action.yml defaults pass its readInputs (durations included)", () => {
    const required: Record<string, Record<string, string>> = {
      'push-multi-tag': { source: 'oci:/x', repositories: '127.0.0.1:5000/a', tags: 'latest' },
      'prune-simplestreams': { path: '/srv/images' },
    };
    for (const name of ACTION_NAMES) {
      const meta = loadActionMetadata(name);
      const values = withDefaults(meta, new Map(Object.entries(required[name] ?? {})));
      expect(() => ACTIONS[name]!.readInputs(new MapInputSource(values))).not.toThrow();
    }
  });
});
