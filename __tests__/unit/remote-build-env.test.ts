import { describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { mkdir, readFile, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadActionMetadata } from '../../src/core/action-metadata.js';
import { MapInputSource } from '../../src/core/inputs.js';
import { RecordingInputSource } from '../support/recording-input-source.js';
import { cacheMountDir, saveKey } from '../../src/actions/remote-build-env/cache-mounts.js';
import { EMPTY_FINGERPRINT, fingerprintDir } from '../../src/actions/remote-build-env/fingerprint.js';
import { parseSshHost, readInputs } from '../../src/actions/remote-build-env/inputs.js';
import { withMark, writeMarkLayer } from '../../src/actions/remote-build-env/container-mark.js';
import { serviceCommand } from '../../src/actions/remote-build-env/local-service.js';
import { mountPointsUnder } from '../../src/actions/remote-build-env/mounts.js';
import { parseProcStat } from '../../src/actions/remote-build-env/process-group.js';
import {
  claimSocket,
  claimTarget,
  maxSocketPathBytes,
  planSocket,
  socketPathProblem,
} from '../../src/actions/remote-build-env/socket-path.js';
import {
  keyMaskValues,
  knownHostsName,
  sshPathProblem,
  sshTunnelArgs,
} from '../../src/actions/remote-build-env/ssh-mode.js';
import { parseRegistryEntry } from '../../src/actions/remote-build-env/tracked.js';
import { inputError } from '../support/input-error.js';
import { parsePodmanVersion } from '../../src/core/podman.js';

const META = loadActionMetadata('remote-build-env');

/** Inputs as the runner passes them: action.yml defaults, then what the workflow sets. */
function inputs(given: Record<string, string>) {
  const values: Record<string, string> = {};
  for (const [name, spec] of Object.entries(META.inputs))
    if (spec.default !== undefined) values[name] = spec.default;
  return new MapInputSource({ ...values, ...given });
}

const SSH = { mode: 'ssh', host: 'ssh://ci@build.example:2222/run/podman/podman.sock', 'ssh-key': 'KEY' };

describe('remote-build-env inputs', () => {
  it('reads every action.yml input and nothing else (local and ssh mode)', () => {
    const local = new RecordingInputSource(inputs({}));
    readInputs(local);
    expect([...local.read].sort()).toEqual(Object.keys(META.inputs).sort());
    const ssh = new RecordingInputSource(inputs({ ...SSH, 'known-hosts': 'x' }));
    readInputs(ssh);
    const unreadInSsh = Object.keys(META.inputs).filter((n) => !ssh.read.has(n));
    // cache-key has a default, so it is always given; it means nothing remotely.
    expect(unreadInSsh).toEqual(['cache-key']);
  });

  it('defaults to a local service with private cache mounts not persisted', () => {
    expect(readInputs(inputs({}))).toEqual({
      mode: 'local',
      socket: undefined,
      isolateStorage: false,
      containersConf: undefined,
      startupTimeoutMs: 30_000,
      exportDockerHost: false,
      cacheMounts: false,
      cacheKey: 'podman-cache-mounts',
      restoreKeys: [],
    });
  });

  it('parses ssh mode with its host URL', () => {
    expect(readInputs(inputs({ ...SSH, 'known-hosts': '[build.example]:2222 ssh-ed25519 AAAA' }))).toEqual({
      mode: 'ssh',
      target: {
        url: SSH.host,
        user: 'ci',
        hostname: 'build.example',
        port: 2222,
        socketPath: '/run/podman/podman.sock',
      },
      socket: undefined,
      sshKey: 'KEY',
      knownHosts: '[build.example]:2222 ssh-ed25519 AAAA',
      insecureHostKey: false,
      startupTimeoutMs: 30_000,
    });
  });

  it.each([
    [{ 'ssh-key': 'K' }, 'ssh-key', 'was given without `host`; set `host: ssh://user@host/path`.'],
    [{ mode: 'ssh' }, 'host', 'is required when `mode: ssh`.'],
    [{ mode: 'ssh', host: SSH.host }, 'ssh-key', 'is required when `mode: ssh`.'],
    [
      SSH,
      'known-hosts',
      'is required with `mode: ssh` (e.g. the output of `ssh-keyscan -p PORT HOST`), unless `insecure-host-key: true`.',
    ],
    [
      { ...SSH, 'insecure-host-key': 'true', 'cache-mounts': 'true' },
      'cache-mounts',
      'is not used with `mode: ssh`; remove it or change `mode`.',
    ],
    [
      { ...SSH, 'insecure-host-key': 'true', 'restore-keys': 'old-' },
      'restore-keys',
      'is not used with `mode: ssh`; remove it or change `mode`.',
    ],
    [{ host: SSH.host }, 'host', 'is not used with `mode: local`; remove it or change `mode`.'],
    [
      { 'insecure-host-key': 'true' },
      'insecure-host-key',
      'is not used with `mode: local`; remove it or change `mode`.',
    ],
    [{ 'startup-timeout': '0s' }, 'startup-timeout', 'must be longer than zero.'],
    [
      { 'startup-timeout': 'soon' },
      'startup-timeout',
      "expected a duration like 90s, 30m, 1h or 7d; got 'soon'.",
    ],
    [{ mode: 'remote' }, 'mode', "must be one of local, ssh; got 'remote'."],
    [
      { 'cache-key': 'a,b' },
      'cache-key',
      'must not contain a comma (the cache service refuses keys with commas).',
    ],
  ])('rejects %j naming %s', (given, name, message) => {
    const e = inputError(() => readInputs(inputs(given as Record<string, string>)));
    expect(e.input).toBe(name);
    expect(e.message).toBe(`Input '${name}': ${message}`);
  });

  it('rejects a socket path too long for the OS and an unreadable containers.conf', () => {
    const long = `/tmp/${'x'.repeat(110)}.sock`;
    expect(inputError(() => readInputs(inputs({ socket: long }))).message).toBe(
      `Input 'socket': the socket path '${long}' is 120 bytes, but linux allows at most 107; choose a shorter path.`,
    );
    const e = inputError(() => readInputs(inputs({ 'containers-conf': '/nonexistent/containers.conf' })));
    expect(e.input).toBe('containers-conf');
    expect(e.message).toMatch(
      /^Input 'containers-conf': cannot read '\/nonexistent\/containers.conf' \(ENOENT/,
    );
    const dir = inputError(() => readInputs(inputs({ 'containers-conf': tmpdir() })));
    expect(dir.message).toMatch(/not a regular file/);
  });
});

describe('ssh host URL', () => {
  it.each([
    [
      'ssh://root@127.0.0.1/run/podman.sock',
      {
        url: 'ssh://root@127.0.0.1:22/run/podman.sock',
        user: 'root',
        hostname: '127.0.0.1',
        port: 22,
        socketPath: '/run/podman.sock',
      },
    ],
    [
      'ssh://me@[::1]:2200/p.sock',
      { url: 'ssh://me@[::1]:2200/p.sock', user: 'me', hostname: '::1', port: 2200, socketPath: '/p.sock' },
    ],
    [
      'ssh://me@[fd00::1]/p.sock',
      {
        url: 'ssh://me@[fd00::1]:22/p.sock',
        user: 'me',
        hostname: 'fd00::1',
        port: 22,
        socketPath: '/p.sock',
      },
    ],
    [
      'ssh://ci.bot@Build-1.example:22/run/user/1000/podman/podman.sock',
      {
        url: 'ssh://ci.bot@Build-1.example:22/run/user/1000/podman/podman.sock',
        user: 'ci.bot',
        hostname: 'Build-1.example',
        port: 22,
        socketPath: '/run/user/1000/podman/podman.sock',
      },
    ],
  ])('parses %s', (url, expected) => {
    expect(parseSshHost(url)).toEqual(expected);
  });

  it.each([
    ['build.example', 'is not a URL'],
    ['tcp://root@host/p.sock', 'uses tcp:// instead of ssh://'],
    ['ssh://host/p.sock', 'names no user'],
    ['ssh://u:pw@host/p.sock', 'must not hold a password (use `ssh-key`)'],
    ['ssh://u@host', 'names no socket path on the remote host'],
    ['ssh://u@host/', 'names no socket path on the remote host'],
    ['ssh://u@host/p.sock?x=1', 'must not have a query or fragment'],
    ['ssh://u@-oProxyCommand=x/p.sock', 'has a host name ssh would not take literally'],
    ['ssh://u@ho%25st/p.sock', 'has a host name ssh would not take literally'],
    [
      'ssh://-oProxyCommand=x@host/p.sock',
      "has a user name ssh would not take literally ('-oProxyCommand=x')",
    ],
    ['ssh://u%25h@host/p.sock', "has a user name ssh would not take literally ('u%h')"],
    ['ssh://u@host:0/p.sock', 'has port 0'],
    ['ssh://u@host/run/a:b.sock', 'has a socket path with a colon, which ssh cannot forward'],
    [
      'ssh://u@host/run/100%.sock',
      "has a socket path with a '%' that starts no valid escape (write a literal % as %25)",
    ],
    [
      'ssh://u%zz@host/p.sock',
      "has a user name with a '%' that starts no valid escape (write a literal % as %25)",
    ],
    ['ssh://u@host/run/a%00b.sock', 'has a socket path with an escaped control character'],
  ])('rejects %s', (url, why) => {
    expect(inputError(() => parseSshHost(url)).message).toBe(
      `Input 'host': ${why}; expected ssh://user@host[:port]/path/to/podman.sock, got '${url}'.`,
    );
  });

  it('rejects a raw control character, and shows the value escaped', () => {
    expect(inputError(() => parseSshHost('ssh://u@host/run/a\0b.sock')).message).toBe(
      `Input 'host': holds a control character (a NUL byte, a newline, ...); expected ssh://user@host[:port]/path/to/podman.sock, got "ssh://u@host/run/a\\u0000b.sock".`,
    );
  });
});

describe('socket path limits', () => {
  it('allows one byte less than sun_path (the NUL) per OS, counting UTF-8 bytes', () => {
    expect(maxSocketPathBytes('linux')).toBe(107);
    expect(maxSocketPathBytes('darwin')).toBe(103);
    expect(socketPathProblem(`/${'a'.repeat(106)}`, 'linux')).toBeUndefined();
    expect(socketPathProblem(`/${'a'.repeat(107)}`, 'linux')).toMatch(
      /is 108 bytes, but linux allows at most 107/,
    );
    expect(socketPathProblem(`/${'é'.repeat(52)}`, 'darwin')).toMatch(
      /is 105 bytes, but darwin allows at most 103/,
    );
  });
});

describe('a chosen socket path something is at', () => {
  it('tells a claim into a scratch dir that is gone and a socket no one listens on (a run ended without post) from a path in use', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ici-sp-'));
    const mine = claimTarget(join(dir, 'ici-mine'));
    try {
      const stale = join(dir, 'stale.sock');
      await symlink(claimTarget(join(dir, 'ici-gone')), stale);
      // Before (e127448): 'is already in use; choose another path or remove it.', as for a live job's path.
      await expect(claimSocket(stale, mine)).rejects.toThrow(
        `Input 'socket': ${stale} is left from a run that ended without its post step (a claim pointing into ${join(dir, 'ici-gone')}, which is gone); remove it, or choose another path.`,
      );
      await mkdir(join(dir, 'ici-live'));
      const live = join(dir, 'live.sock');
      await symlink(claimTarget(join(dir, 'ici-live')), live);
      await expect(claimSocket(live, mine)).rejects.toThrow(`${live} is already in use;`);

      // The socket of a service killed with its runner: the file stays, nothing listens.
      const dead = join(dir, 'dead.sock');
      const server = spawn(process.execPath, [
        '-e',
        `require('node:net').createServer().listen(${JSON.stringify(dead)}, () => console.log('up'))`,
      ]);
      await new Promise((resolve) => server.stdout.once('data', resolve));
      await expect(planSocket(dead, dir)).rejects.toThrow(`${dead} is already in use;`);
      const exited = new Promise((resolve) => server.once('exit', resolve));
      server.kill('SIGKILL');
      await exited;
      await expect(planSocket(dead, dir)).rejects.toThrow(
        `${dead} is left from a run that ended without its post step (a socket no one listens on);`,
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('service command', () => {
  const base = {
    PATH: '/usr/bin',
    CONTAINER_HOST: 'unix:///elsewhere',
    DOCKER_HOST: 'tcp://x',
    TMPDIR: '/tmp',
  };

  it('runs a plain service with its own TMPDIR and no inherited remote-client variables', () => {
    const { args, env } = serviceCommand({ socket: '/r/s.sock', tmpdir: '/r/tmp', logFile: '/r/log' }, base);
    expect(args).toEqual(['--log-level', 'info', 'system', 'service', '--time=0', 'unix:///r/s.sock']);
    // The mark goes to the conmon of each container it starts: post finds this job's by it.
    expect(env).toEqual({ PATH: '/usr/bin', TMPDIR: '/r/tmp', LC_IMAGE_CI_SERVICE: '/r/tmp' });
  });

  it('adds private storage and the extra containers.conf under the variable the podman version knows', () => {
    const { args, env } = serviceCommand(
      {
        socket: '/r/s.sock',
        tmpdir: '/r/tmp',
        logFile: '/r/log',
        storage: { root: '/r/root', runroot: '/r/run', libpodTmp: '/r/libpod' },
        containersConf: { path: '/c.conf', variable: 'CONTAINERS_CONF_OVERRIDE' },
      },
      base,
    );
    expect(args.slice(0, 6)).toEqual(['--root', '/r/root', '--runroot', '/r/run', '--tmpdir', '/r/libpod']);
    expect(env.CONTAINERS_CONF_OVERRIDE).toBe('/c.conf');
  });
});

describe('container mark (the annotation the service gives the containers it creates)', () => {
  const line = 'annotations = ["io.github.image-ci.remote-build-env=t0k"]';

  it('goes into the [containers] table a file has, or a new one; not into a file that sets annotations or dotted containers keys', () => {
    expect(withMark('[engine]\nruntime = "runc"\n\n[containers] # ours\ndefault_ulimits = []\n', 't0k')).toBe(
      `[engine]\nruntime = "runc"\n\n[containers] # ours\n${line}\ndefault_ulimits = []\n`,
    );
    expect(withMark('[engine]\nruntime = "runc"', 't0k')).toBe(
      `[engine]\nruntime = "runc"\n\n[containers]\n${line}\n`,
    );
    expect(withMark('[containers]\n  annotations = ["a=b"]\n', 't0k')).toBeUndefined();
    expect(withMark('containers.env = ["A=1"]\n', 't0k')).toBeUndefined();
  });

  it('is left out, not added where the copy would be refused or say something else: a quoted or inline containers table, a quoted annotations key, a multi-line string; a BOM or CRLF lines are no obstacle', () => {
    for (const text of [
      '["containers"]\ndefault_ulimits = []\n',
      "[ 'containers' ]\n",
      'containers = { default_ulimits = [] }\n',
      '\'containers\'.env = ["A=1"]\n',
      '[containers]\n"annotations" = ["a=b"]\n',
      // The first header-like line is inside the string: the annotation would become part of engine.env.
      '[engine]\nenv = ["""\n[containers]\n"""]\n\n[containers]\ndefault_ulimits = []\n',
    ]) {
      expect({ text, marked: withMark(text, 't0k') }).toEqual({ text, marked: undefined });
    }
    expect(withMark('\uFEFF[containers]\r\ndefault_ulimits = []\r\n', 't0k')).toBe(
      `\uFEFF[containers]\n${line}\ndefault_ulimits = []\r\n`,
    );
  });

  it('reaches the service as a module from podman 4.8, else as a copy of the file its variable names, or not at all where CONTAINERS_CONF would replace the system’s files', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ici-mark-'));
    try {
      const user = join(dir, 'user.conf');
      await writeFile(user, '[engine]\nruntime = "runc"\n');
      const v = (text: string) => parsePodmanVersion(text)!;
      const five = await writeMarkLayer(v('5.4.2'), dir, 't0k', user);
      expect(five).toEqual({ module: join(dir, 'mark.conf') });
      expect(await readFile(join(dir, 'mark.conf'), 'utf8')).toBe(
        '[containers]\nannotations = ["io.github.image-ci.remote-build-env=t0k", {append=true}]\n',
      );
      expect(await writeMarkLayer(v('4.3.1'), dir, 't0k', undefined, {})).toEqual({
        none: "podman 4.3.1 has no containers.conf layer but CONTAINERS_CONF, which would replace the system's",
      });
      expect(await writeMarkLayer(v('4.3.1'), dir, 't0k', undefined, { CONTAINERS_CONF: user })).toEqual({
        containersConf: { path: join(dir, 'mark.conf'), variable: 'CONTAINERS_CONF' },
      });
      expect(await readFile(join(dir, 'mark.conf'), 'utf8')).toBe(
        `[engine]\nruntime = "runc"\n\n[containers]\n${line}\n`,
      );
      expect(await writeMarkLayer(v('4.5.0'), dir, 't0k', undefined, {})).toEqual({
        containersConf: { path: join(dir, 'mark.conf'), variable: 'CONTAINERS_CONF_OVERRIDE' },
      });
      expect(await readFile(join(dir, 'mark.conf'), 'utf8')).toBe(`[containers]\n${line}\n`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a module is a global flag of the service', () => {
    const { args } = serviceCommand(
      { socket: '/r/s.sock', tmpdir: '/r/tmp', logFile: '/r/log', modules: ['/r/mark.conf'] },
      {},
    );
    expect(args.slice(0, 2)).toEqual(['--module', '/r/mark.conf']);
  });
});

describe('process and mount bookkeeping', () => {
  it('reads state and start time from /proc/<pid>/stat even when the name has spaces and parentheses', () => {
    const rest = Array.from({ length: 20 }, (_, i) => String(i + 4)).join(' ');
    expect(parseProcStat(`123 (podman (x) y) S ${rest}`)).toEqual({ state: 'S', startTime: '22' });
    expect(parseProcStat('garbage')).toBeUndefined();
  });

  it('lists mount points below a dir, deepest first, decoding octal escapes, not siblings with a common prefix', () => {
    const line = (point: string) => `41 26 254:0 / ${point} rw,relatime - ext4 /dev/vda rw`;
    const info = [
      line('/tmp/rt/ici-1/storage/overlay'),
      line('/tmp/rt/ici-1'),
      line('/tmp/rt/ici-1/storage/overlay/abc/merged'),
      line('/tmp/rt/ici-10'),
      line('/tmp/rt/ici-1/with\\040space'),
    ].join('\n');
    expect(mountPointsUnder(info, '/tmp/rt/ici-1')).toEqual([
      '/tmp/rt/ici-1/storage/overlay/abc/merged',
      '/tmp/rt/ici-1/storage/overlay',
      '/tmp/rt/ici-1/with space',
      '/tmp/rt/ici-1',
    ]);
  });
});

describe('ssh bookkeeping', () => {
  it('names hosts the way known_hosts does', () => {
    expect(knownHostsName({ hostname: 'h', port: 22 })).toBe('h');
    expect(knownHostsName({ hostname: '127.0.0.1', port: 2222 })).toBe('[127.0.0.1]:2222');
    expect(knownHostsName({ hostname: '::1', port: 2222 })).toBe('[::1]:2222');
    expect(knownHostsName({ hostname: '::1', port: 22 })).toBe('::1');
  });

  it('masks each key body line before the whole key, not the armour', () => {
    const key = '-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\nBBBB\n-----END OPENSSH PRIVATE KEY-----\n';
    expect(keyMaskValues(key)).toEqual(['AAAA', 'BBBB', key.trim()]);
  });

  it('builds a tunnel that reads no ssh config, offers only our key and trusts only our known_hosts', () => {
    const target = parseSshHost('ssh://ci@[::1]:2222/run/podman/podman.sock');
    const files = { key: '/t/ici-1/id', knownHosts: '/t/ici 1/known_hosts', socket: '/t/ici-1/podman.sock' };
    const args = sshTunnelArgs(target, files, 30_000);
    expect(args.slice(0, 6)).toEqual(['-F', 'none', '-N', '-T', '-i', '/t/ici-1/id']);
    expect(args).toEqual(
      expect.arrayContaining([
        'UserKnownHostsFile="/t/ici 1/known_hosts"',
        'StrictHostKeyChecking=yes',
        'GlobalKnownHostsFile=/dev/null',
        'IdentitiesOnly=yes',
        'IdentityAgent=none',
        'BatchMode=yes',
        'ConnectTimeout=30',
      ]),
    );
    // The host comes last, after `--`: nothing in it can be read as an option.
    expect(args.slice(-8)).toEqual([
      '-p',
      '2222',
      '-l',
      'ci',
      '-L',
      '/t/ici-1/podman.sock:/run/podman/podman.sock',
      '--',
      '::1',
    ]);
    const insecure = sshTunnelArgs(target, { ...files, knownHosts: undefined }, 500);
    expect(insecure).toEqual(
      expect.arrayContaining([
        'UserKnownHostsFile=/dev/null',
        'StrictHostKeyChecking=no',
        'ConnectTimeout=1',
      ]),
    );
  });

  it('refuses paths ssh would expand or split', () => {
    expect(sshPathProblem('/tmp/ici-1/podman.sock')).toBeUndefined();
    expect(sshPathProblem('/tmp/with space/id')).toBeUndefined();
    for (const bad of ['/tmp/50%/id', '/tmp/${HOME}/id', '/tmp/a"b/id', '/tmp/a:b.sock'])
      expect(sshPathProblem(bad)).toMatch(/which ssh would not take literally in a path$/);
  });
});

describe('tracked children registry', () => {
  it('reads "<pid> <start time>" entries and nothing else', () => {
    expect(parseRegistryEntry('1234 98765\n')).toEqual({ pid: 1234, startTime: '98765' });
    expect(parseRegistryEntry('1234 \n')).toEqual({ pid: 1234 });
    for (const bad of ['', '1234', '1234 5', '0 5\n', '1 5\n', '-3 5\n', 'x 5\n'])
      expect(parseRegistryEntry(bad)).toBeUndefined();
  });
});

describe('cache-mount fingerprint and keys', () => {
  it('changes when a file is added or touched, not when nothing happened', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ici-fp-'));
    try {
      expect(await fingerprintDir(join(dir, 'missing'))).toBe(EMPTY_FINGERPRINT);
      await mkdir(join(dir, 'c'));
      await writeFile(join(dir, 'c/a'), 'x');
      await symlink('a', join(dir, 'c/link'));
      const first = await fingerprintDir(dir);
      expect(await fingerprintDir(dir)).toBe(first);
      await utimes(join(dir, 'c/a'), new Date(1000), new Date(1000));
      const touched = await fingerprintDir(dir);
      expect(touched).not.toBe(first);
      await writeFile(join(dir, 'c/b'), '');
      expect(await fingerprintDir(dir)).not.toBe(touched);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('finds cache mounts where the service’s buildah keeps them: per user from podman 4.4 on', () => {
    const v = (text: string) => parsePodmanVersion(text)!;
    expect(cacheMountDir('/t', v('4.3.1'), 0)).toBe('/t/buildah-cache');
    expect(cacheMountDir('/t', v('4.4.0'), 0)).toBe('/t/buildah-cache-0');
    expect(cacheMountDir('/t', v('5.4.2'), 1001)).toBe('/t/buildah-cache-1001');
  });

  it('saves under the restore prefix plus 16 fingerprint characters', () => {
    expect(saveKey('k-Linux-X64-', 'f'.repeat(64))).toBe(`k-Linux-X64-${'f'.repeat(16)}`);
  });
});
