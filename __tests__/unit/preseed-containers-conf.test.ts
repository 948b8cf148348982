import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  planContainersConf,
  setMachineImage,
  tomlString,
} from '../../src/actions/preseed-podman-vm/containers-conf.js';
import { podmanVersions, requireAvailable, runWith } from '../support/podman-matrix.js';

const tmp = mkdtempSync(join(tmpdir(), 'preseed-conf-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('setMachineImage', () => {
  it('writes a [machine] table into an empty file', () => {
    expect(setMachineImage('', '/t/ici-pvm/machine-os.qcow2.zst')).toBe(
      '[machine]\nimage = "/t/ici-pvm/machine-os.qcow2.zst"\n',
    );
  });

  it('replaces an existing image and keeps every other line, comment and table', () => {
    const conf = [
      '# user settings',
      '[containers]',
      'image = "not-this-one"',
      '[machine]',
      'cpus = 4',
      '  image = "testing"  # old stream',
      '[network]',
      'default_network = "podman"',
      '',
    ].join('\n');
    const out = setMachineImage(conf, '/img.qcow2.zst');
    expect(out).toBe(
      [
        '# user settings',
        '[containers]',
        'image = "not-this-one"',
        '[machine]',
        'cpus = 4',
        'image = "/img.qcow2.zst"',
        '[network]',
        'default_network = "podman"',
        '',
      ].join('\n'),
    );
  });

  it('adds image under an existing [machine] table that lacks it, not under a [machine.x] subtable', () => {
    const out = setMachineImage('[machine]\nmemory = 4096\n[machine.volumes]\n', '/i');
    expect(out).toBe('[machine]\nimage = "/i"\nmemory = 4096\n[machine.volumes]\n');
  });

  it('escapes Windows paths and quotes as TOML basic strings', () => {
    expect(tomlString('C:\\Users\\a "b"')).toBe('"C:\\\\Users\\\\a \\"b\\""');
  });
});

describe('planContainersConf', () => {
  it('writes only the image for CONTAINERS_CONF_OVERRIDE (podman >= 4.4)', async () => {
    const plan = await planContainersConf('/i.qcow2.zst', 'CONTAINERS_CONF_OVERRIDE', join(tmp, 'own.conf'), {
      HOME: tmp,
    });
    expect(plan).toEqual({
      variable: 'CONTAINERS_CONF_OVERRIDE',
      text: '[machine]\nimage = "/i.qcow2.zst"\n',
    });
  });

  // Before: the plan was the image alone, and podman reads one override file: the earlier one was dropped.
  it('carries an override file an earlier step set into ours, and our own on a second step', async () => {
    const earlier = join(tmp, 'earlier-override.conf');
    writeFileSync(earlier, '[machine]\ncpus = 3\nimage = "/theirs"\n[engine]\nenv = ["A=1"]\n');
    const own = join(tmp, 'own-override.conf');
    const plan = await planContainersConf('/i', 'CONTAINERS_CONF_OVERRIDE', own, {
      HOME: tmp,
      CONTAINERS_CONF_OVERRIDE: earlier,
    });
    expect(plan).toEqual({
      variable: 'CONTAINERS_CONF_OVERRIDE',
      base: earlier,
      text: '[machine]\ncpus = 3\nimage = "/i"\n[engine]\nenv = ["A=1"]\n',
    });
    writeFileSync(own, plan.text);
    const again = await planContainersConf('/j', 'CONTAINERS_CONF_OVERRIDE', own, {
      HOME: tmp,
      CONTAINERS_CONF_OVERRIDE: own,
    });
    expect(again.text).toBe('[machine]\ncpus = 3\nimage = "/j"\n[engine]\nenv = ["A=1"]\n');
  });

  it('refuses an override that is no regular file, naming the variable, instead of blocking on it', async () => {
    const fifo = join(tmp, 'override.fifo');
    execFileSync('mkfifo', [fifo]);
    await expect(
      planContainersConf('/i', 'CONTAINERS_CONF_OVERRIDE', join(tmp, 'own.conf'), {
        HOME: tmp,
        CONTAINERS_CONF_OVERRIDE: fifo,
      }),
    ).rejects.toThrow(
      /^Environment variable CONTAINERS_CONF_OVERRIDE: names .*override\.fifo, which cannot be/,
    );
  });

  it("carries the user's containers.conf into the CONTAINERS_CONF file (podman 4.3 replaces the whole conf)", async () => {
    const home = join(tmp, 'home');
    mkdirSync(join(home, '.config', 'containers'), { recursive: true });
    const user = join(home, '.config', 'containers', 'containers.conf');
    writeFileSync(user, '[engine]\nruntime = "crun"\n');
    const plan = await planContainersConf('/i.qcow2.zst', 'CONTAINERS_CONF', join(tmp, 'own.conf'), {
      HOME: home,
    });
    expect(plan.variable).toBe('CONTAINERS_CONF');
    expect(plan.base).toBe(user);
    expect(plan.text).toBe('[engine]\nruntime = "crun"\n\n[machine]\nimage = "/i.qcow2.zst"\n');
  });

  // Before: nothing said that podman 4.3 ignores every containers.conf.d drop-in once CONTAINERS_CONF is set
  // (checked: a drop-in's `cpus = 3` became podman's default of 1).
  it('names the drop-in files CONTAINERS_CONF makes podman < 4.4 skip, unless one was set before', async () => {
    const home = join(tmp, 'home-dropin');
    const dropIns = join(home, '.config', 'containers', 'containers.conf.d');
    mkdirSync(dropIns, { recursive: true });
    writeFileSync(join(dropIns, '50-cpus.conf'), '[machine]\ncpus = 3\n');
    writeFileSync(join(dropIns, 'README'), 'not a drop-in');
    const plan = await planContainersConf('/i', 'CONTAINERS_CONF', join(tmp, 'own.conf'), { HOME: home });
    expect(plan.dropped).toContain(join(dropIns, '50-cpus.conf'));
    expect(plan.dropped).not.toContain(join(dropIns, 'README'));
    const earlier = join(tmp, 'earlier-dropin.conf');
    writeFileSync(earlier, '');
    const set = await planContainersConf('/i', 'CONTAINERS_CONF', join(tmp, 'own.conf'), {
      HOME: home,
      CONTAINERS_CONF: earlier,
    });
    expect(set.dropped).toBeUndefined();
  });

  // Before: the CONTAINERS_CONF base (podman < 4.4) was read with readFile, unchecked: a directory there threw
  // a bare EISDIR, a FIFO blocked main for good, a disk image there was read whole into memory.
  it('refuses a CONTAINERS_CONF that is no regular file of at most 1 MiB, naming the variable', async () => {
    const big = join(tmp, 'big.conf');
    writeFileSync(big, Buffer.alloc(1024 * 1024 + 1, 0x23));
    for (const earlier of [big, tmp]) {
      await expect(
        planContainersConf('/i', 'CONTAINERS_CONF', join(tmp, 'own.conf'), {
          HOME: tmp,
          CONTAINERS_CONF: earlier,
        }),
      ).rejects.toThrow(/^Environment variable CONTAINERS_CONF: names .*, which cannot be carried/);
    }
  });

  it('prefers a CONTAINERS_CONF already set, but never nests its own earlier file', async () => {
    const earlier = join(tmp, 'earlier.conf');
    writeFileSync(earlier, '[engine]\nruntime = "runc"\n');
    const own = join(tmp, 'own.conf');
    writeFileSync(own, '[machine]\nimage = "/old"\n');
    const env = { HOME: join(tmp, 'nohome'), CONTAINERS_CONF: earlier };
    expect((await planContainersConf('/i', 'CONTAINERS_CONF', own, env)).base).toBe(earlier);
    const again = await planContainersConf('/i', 'CONTAINERS_CONF', own, { ...env, CONTAINERS_CONF: own });
    expect(again.base).not.toBe(own);
  });
});

/**
 * Valid TOML the line edit misread: a quoted table name or key (TOML's same table or key, so a second one is an
 * error that stops every podman command) and lines inside a multi-line string (no table, no key).
 */
const HOSTILE_CONFS: Array<[string, string]> = [
  ['a quoted table name', `[ "machine" ]\ncpus = 3\n`],
  ['a quoted image key', `[machine]\ncpus = 3\n'image' = "/theirs"\n`],
  [
    'a [machine] line inside a multi-line string',
    `[engine]\nenv = ["""A=\n[machine]\nimage = "/not/a/setting"\n"""]\n[machine]\ncpus = 3\n`,
  ],
  ['an image given as a multi-line string', `[machine]\nimage = '''\n/theirs'''\ncpus = 3\n`],
  ['a BOM and CRLF line ends', `\uFEFF[machine]\r\ncpus = 3\r\nimage = "/theirs" # old\r\n`],
  // The top-level table defining [machine] as an inline table or by dotted keys: before, a [machine] table was
  // added after it, the same table twice (podman: "Key 'machine' has already been defined").
  [
    'an inline [machine] table with an image',
    `machine = { cpus = 3, image = "/theirs" } # inline\n[engine]\n`,
  ],
  [
    'an inline [machine] table with "}" and "," in a string, CRLF',
    `machine = {volumes = ["/tmp/a,}:/b"], cpus = 3}\r\n[engine]\r\n`,
  ],
  [
    'dotted machine keys with an image',
    `machine.cpus = 3\n"machine" . 'image' = "/theirs" # old\n[engine]\n`,
  ],
  ['dotted machine keys without an image', `# mine\nmachine.cpus = 3 # three\n[engine]\nenv = ["A=1"]\n`],
  // TOML 1.0 lets a value inside an inline table span lines: before, the step refused these as TOML 1.1.
  [
    'an inline [machine] table whose array spans lines, with a comment',
    `machine = { volumes = [\n  "/a:/a", # a } comment "\n], cpus = 3 }\n[engine]\n`,
  ],
  [
    'an inline [machine] table whose image is a multi-line string',
    `machine = { image = """\n/theirs""", cpus = 3 } # old\n[engine]\nenv = ["A=1"]\n`,
  ],
];

describe('setMachineImage on valid TOML a line edit can misread', () => {
  it('edits the one [machine] table and keeps the text of a multi-line string', () => {
    expect(setMachineImage(HOSTILE_CONFS[0]![1], '/i')).toBe('[ "machine" ]\nimage = "/i"\ncpus = 3\n');
    expect(setMachineImage(HOSTILE_CONFS[1]![1], '/i')).toBe('[machine]\ncpus = 3\nimage = "/i"\n');
    expect(setMachineImage(HOSTILE_CONFS[2]![1], '/i')).toBe(
      `[engine]\nenv = ["""A=\n[machine]\nimage = "/not/a/setting"\n"""]\n[machine]\nimage = "/i"\ncpus = 3\n`,
    );
    expect(setMachineImage(HOSTILE_CONFS[3]![1], '/i')).toBe('[machine]\nimage = "/i"\ncpus = 3\n');
  });

  it('sets the image inside an inline [machine] table, or as a dotted key beside dotted ones', () => {
    expect(setMachineImage(HOSTILE_CONFS[5]![1], '/i')).toBe(
      'machine = { cpus = 3, image = "/i" } # inline\n[engine]\n',
    );
    expect(setMachineImage(HOSTILE_CONFS[6]![1], '/i')).toBe(
      'machine = {volumes = ["/tmp/a,}:/b"], cpus = 3, image = "/i" }\r\n[engine]\r\n',
    );
    expect(setMachineImage('machine = {}\n', '/i')).toBe('machine = { image = "/i" }\n');
    expect(setMachineImage(HOSTILE_CONFS[7]![1], '/i')).toBe(
      'machine.cpus = 3\nmachine.image = "/i"\n[engine]\n',
    );
    expect(setMachineImage(HOSTILE_CONFS[8]![1], '/i')).toBe(
      'machine.image = "/i"\n# mine\nmachine.cpus = 3 # three\n[engine]\nenv = ["A=1"]\n',
    );
    // Not top-level: [containers] machine.image is another key.
    expect(setMachineImage('[containers]\nmachine.image = "x"\n', '/i')).toBe(
      '[containers]\nmachine.image = "x"\n\n[machine]\nimage = "/i"\n',
    );
  });

  it('sets the image inside an inline [machine] table whose values span lines (TOML 1.0)', () => {
    expect(setMachineImage(HOSTILE_CONFS[9]![1], '/i')).toBe(
      `machine = { volumes = [\n  "/a:/a", # a } comment "\n], cpus = 3, image = "/i" }\n[engine]\n`,
    );
    expect(setMachineImage(HOSTILE_CONFS[10]![1], '/i')).toBe(
      'machine = { image = "/i", cpus = 3 } # old\n[engine]\nenv = ["A=1"]\n',
    );
  });

  it('refuses an inline [machine] table with a line break between entries (TOML 1.1) instead of breaking it', async () => {
    expect(() => setMachineImage('machine = {\n  cpus = 3\n}\n', '/i')).toThrow(
      /inline table with a line break between its entries \(TOML 1\.1, which podman refuses too\); write it as a \[machine\] table/,
    );
    const earlier = join(tmp, 'multi-line-inline.conf');
    writeFileSync(earlier, 'machine = {\n  cpus = 3\n}\n');
    await expect(
      planContainersConf('/i', 'CONTAINERS_CONF_OVERRIDE', join(tmp, 'own.conf'), {
        HOME: tmp,
        CONTAINERS_CONF_OVERRIDE: earlier,
      }),
    ).rejects.toThrow(
      /^cannot set \[machine\] image in .*multi-line-inline\.conf: it sets `machine = \{ \.\.\. \}`/,
    );
  });
});

// The podman of each row reads the file back: `machine init --help` shows the image and cpus it would use.
describe.each(podmanVersions())('[$label] podman reads the rewritten containers.conf', (v) => {
  beforeAll(() => requireAvailable(v));

  /** What `podman machine init --help` prints (defaults, or why the conf was not read) with `file` as the conf. */
  async function initHelp(file: string): Promise<string> {
    const variable = v.major >= 5 ? 'CONTAINERS_CONF_OVERRIDE' : 'CONTAINERS_CONF';
    const help = await runWith(v, 'podman', ['machine', 'init', '--help'], {
      env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', HOME: tmp, [variable]: file },
      timeoutMs: 30_000,
      allowFailure: true,
    });
    return help.stdout + help.stderr;
  }

  it.each(HOSTILE_CONFS)("with %s: our image and the user's cpus", async (_what, conf) => {
    const file = join(tmp, `hostile-${v.major}.conf`);
    const image = '/t/ici-pvm/machine-os.qcow2.zst';
    writeFileSync(file, setMachineImage(conf, image));
    const out = await initHelp(file);
    expect(out).toMatch(/--image(-path)? string .*\(default "\/t\/ici-pvm\/machine-os\.qcow2\.zst"\)/);
    expect(out).toMatch(/--cpus uint .*\(default 3\)/);
  });

  // A local `image` file (or RUNNER_TEMP) may be named with any character but `/` and NUL. Before, only `\`, `"`,
  // LF and tab were escaped: with a CR, ESC or DEL in the path every podman command failed ("toml: line 2 (last
  // key \"machine.image\"): TOML files cannot contain control characters: '0x0d'").
  it('reads back an image path holding control characters, quotes, backslashes, spaces and non-ASCII', async () => {
    const file = join(tmp, `control-${v.major}.conf`);
    writeFileSync(
      file,
      setMachineImage('[machine]\ncpus = 3\n', '/t/a "b" \\c é\r\b\f\x1b\x7f\x01\u0085.qcow2.zst'),
    );
    const out = await initHelp(file);
    // pflag shows the default as Go's strconv.Quote writes it.
    expect(out).toContain('(default "/t/a \\"b\\" \\\\c é\\r\\b\\f\\x1b\\x7f\\x01\\u0085.qcow2.zst")');
    expect(out).toMatch(/--cpus uint .*\(default 3\)/);
  });

  // What the step refuses podman refuses too, so no file podman reads is turned away.
  it('refuses an inline table with a line break between its entries (TOML 1.1), as the step does', async () => {
    const file = join(tmp, `toml11-${v.major}.conf`);
    writeFileSync(file, 'machine = {\n  cpus = 3 }\n');
    expect(await initHelp(file)).toMatch(/newlines not allowed within inline tables/);
  });
});
