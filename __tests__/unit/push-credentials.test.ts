/**
 * Credential lookup as containers/image does it (plus docker's credsStore): the search path, the first file
 * that answers, credHelpers before entries, the longest host/path prefix, docker.io aliases, identity tokens,
 * and credential helpers as real scripts on PATH. Real files in temp dirs; nothing is mocked.
 */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from '@jest/globals';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { normaliseAuthKey, parseAuthConfig } from '../../src/actions/push-multi-tag/auth-files.js';
import { MapInputSource } from '../../src/core/inputs.js';
import { CliHost } from '../../src/core/host.js';
import {
  authFileSearchPath,
  CredentialLookup,
  resolveCredentials,
  type AuthFileSpec,
} from '../../src/actions/push-multi-tag/credentials.js';
import { readInputs } from '../../src/actions/push-multi-tag/inputs.js';

const b64 = (s: string) => Buffer.from(s).toString('base64');

describe('auth files', () => {
  it('normalises the keys docker and podman write', () => {
    expect(normaliseAuthKey('https://index.docker.io/v1/')).toBe('docker.io');
    expect(normaliseAuthKey('registry-1.docker.io')).toBe('docker.io');
    expect(normaliseAuthKey('index.docker.io/library')).toBe('docker.io/library');
    expect(normaliseAuthKey('https://r.example:5000/v2/')).toBe('r.example:5000');
    expect(normaliseAuthKey('R.Example/Team/')).toBe('r.example/Team');
  });

  it('reads identity tokens, credHelpers and credsStore; skips helper markers; exact keys win over URL forms', () => {
    const config = parseAuthConfig(
      JSON.stringify({
        auths: {
          'https://r.example': { auth: b64('url:form') },
          'r.example': { auth: b64('plain:form') },
          'tok.example': { auth: b64('bob:'), identitytoken: 'refresh-1' },
          'marker.example': {},
          'nul.example': { auth: b64('u:p\0\0') },
        },
        credHelpers: { 'https://index.docker.io/v1/': 'desktop', 'gcr.io': 'gcloud' },
        credsStore: 'pass',
      }),
    );
    expect(config.auths.get('r.example')).toEqual({ username: 'plain', password: 'form' });
    expect(config.auths.get('tok.example')).toEqual({
      username: 'bob',
      password: '',
      identityToken: 'refresh-1',
    });
    expect(config.auths.has('marker.example')).toBe(false);
    expect(config.auths.get('nul.example')).toEqual({ username: 'u', password: 'p' });
    expect(config.credHelpers).toEqual(
      new Map([
        ['docker.io', 'desktop'],
        ['gcr.io', 'gcloud'],
      ]),
    );
    expect(config.credsStore).toBe('pass');
  });

  it('reads the legacy ~/.dockercfg layout (the auths map alone)', () => {
    const config = parseAuthConfig(
      JSON.stringify({ 'https://old.example/v1/': { auth: b64('o:p'), email: 'x' } }),
      true,
    );
    expect(config.auths.get('old.example')).toEqual({ username: 'o', password: 'p' });
  });

  it('refuses what is not a JSON object', () => {
    expect(() => parseAuthConfig('[]')).toThrow('not a JSON object');
    expect(() => parseAuthConfig('{')).toThrow();
  });
});

describe('the search path', () => {
  const home = '/home/u';
  it('is auth-file, REGISTRY_AUTH_FILE, podman runtime, containers config, docker config, ~/.dockercfg', () => {
    const env = {
      HOME: home,
      REGISTRY_AUTH_FILE: '/ra.json',
      XDG_RUNTIME_DIR: '/run/user/1000',
      XDG_CONFIG_HOME: '/cfg',
    };
    expect(authFileSearchPath('/input.json', env, 1000)).toEqual([
      { path: '/input.json', fromInput: true },
      { path: '/ra.json' },
      { path: '/run/user/1000/containers/auth.json' },
      { path: '/cfg/containers/auth.json' },
      { path: '/home/u/.docker/config.json' },
      { path: '/home/u/.dockercfg', legacy: true },
    ]);
  });
  it('uses /run/containers/<uid>, ~/.config and $DOCKER_CONFIG when so set; root also reads /etc/containers/auth.json', () => {
    const paths = (env: NodeJS.ProcessEnv, uid: number) =>
      authFileSearchPath(undefined, env, uid).map((f) => f.path);
    expect(paths({ HOME: home, DOCKER_CONFIG: '/dc', TMPDIR: '/nonexistent' }, 1000)).toEqual([
      '/run/containers/1000/auth.json',
      '/home/u/rundir/containers/auth.json',
      '/home/u/.config/containers/auth.json',
      '/dc/config.json',
      '/home/u/.dockercfg',
    ]);
    expect(paths({ HOME: '/root' }, 0).at(-1)).toBe('/etc/containers/auth.json');
    // A systemd service (INVOCATION_ID) run as root reads the system file first, as containers/image does.
    expect(paths({ HOME: '/root', INVOCATION_ID: 'x' }, 0)[0]).toBe('/etc/containers/auth.json');
  });
});

describe("rootless podman's own runtime dir without XDG_RUNTIME_DIR", () => {
  // podman login (rootless, XDG_RUNTIME_DIR unset) writes to $TMPDIR/podman-run-<uid>/containers/auth.json when
  // /run/user/<uid> is not the user's: seen with podman 4.3 as an ordinary user here.
  const uid = 54321;
  let tmp: string;
  beforeEach(() => {
    tmp = mkdtempSync(join(tmpdir(), 'ici-prd-'));
  });
  afterEach(() => rmSync(tmp, { recursive: true, force: true }));
  const paths = () => authFileSearchPath(undefined, { HOME: '/home/u', TMPDIR: tmp }, uid).map((f) => f.path);

  it('is searched after /run/containers/<uid> when it is a 0700 dir of the user', () => {
    const dir = join(tmp, `podman-run-${uid}`);
    mkdirSync(dir, { mode: 0o700 });
    chownSync(dir, uid, uid);
    expect(paths().slice(0, 2)).toEqual([
      `/run/containers/${uid}/auth.json`,
      join(dir, 'containers/auth.json'),
    ]);
  });

  // Podman 4.3 as an ordinary user here took $TMPDIR/podman-run-<uid> at 0755, 0750, 0711, 0704 and 0740, and went
  // on to $HOME/rundir at 0770, 0720, 0702, 0777, 0600 and 0500.
  it.each([
    ['0755', 0o755],
    ['0750', 0o750],
    ['0711', 0o711],
  ])("is searched when it is the user's, mode %s (not writable by others)", (_, mode) => {
    const dir = join(tmp, `podman-run-${uid}`);
    mkdirSync(dir);
    chmodSync(dir, mode);
    chownSync(dir, uid, uid);
    expect(paths()[1]).toBe(join(dir, 'containers/auth.json'));
  });

  it.each([
    ['owned by another user', 0o700, 0],
    ['writable by others', 0o777, uid],
    ['writable by its group', 0o770, uid],
    ['not writable by the user', 0o500, uid],
  ])('is not searched when %s (planted in a shared /tmp)', (_, mode, owner) => {
    const dir = join(tmp, `podman-run-${uid}`);
    mkdirSync(dir);
    chmodSync(dir, mode);
    chownSync(dir, owner, owner);
    expect(paths()).not.toContain(join(dir, 'containers/auth.json'));
    expect(paths()[1]).toBe('/home/u/rundir/containers/auth.json');
  });

  // Podman 5 (containers/common's GetRuntimeDir asks containers/storage first) made $TMPDIR/storage-run-<uid> as
  // an ordinary user here; containers/storage takes it only when it is no symlink.
  it('podman 5 storage-run-<uid> is searched, before podman 4 podman-run-<uid>; not through a symlink', () => {
    const five = join(tmp, `storage-run-${uid}`);
    const four = join(tmp, `podman-run-${uid}`);
    mkdirSync(five, { mode: 0o700 });
    chownSync(five, uid, uid);
    expect(paths()[1]).toBe(join(five, 'containers/auth.json'));
    mkdirSync(four, { mode: 0o700 });
    chownSync(four, uid, uid);
    expect(paths().slice(1, 3)).toEqual([
      join(five, 'containers/auth.json'),
      join(four, 'containers/auth.json'),
    ]);
    rmSync(four, { recursive: true });
    rmSync(five, { recursive: true });
    mkdirSync(join(tmp, 'elsewhere'), { mode: 0o700 });
    chownSync(join(tmp, 'elsewhere'), uid, uid);
    symlinkSync(join(tmp, 'elsewhere'), five);
    expect(paths()[1]).toBe('/home/u/rundir/containers/auth.json');
  });

  it('is never searched for root, nor when XDG_RUNTIME_DIR is set', () => {
    expect(authFileSearchPath(undefined, { HOME: '/root', TMPDIR: tmp }, 0).map((f) => f.path)).not.toContain(
      '/root/rundir/containers/auth.json',
    );
    expect(
      authFileSearchPath(undefined, { HOME: '/home/u', XDG_RUNTIME_DIR: '/x', TMPDIR: tmp }, uid).map(
        (f) => f.path,
      )[0],
    ).toBe('/x/containers/auth.json');
  });
});

describe('CredentialLookup (real files, real helper scripts on PATH)', () => {
  let dir: string;
  let bin: string;
  const logs: string[] = [];
  const file = (name: string, content: unknown): AuthFileSpec => {
    const path = join(dir, name);
    writeFileSync(path, typeof content === 'string' ? content : JSON.stringify(content));
    return { path };
  };
  const helper = (name: string, script: string) => {
    writeFileSync(join(bin, `docker-credential-${name}`), `#!/bin/sh\n${script}\n`);
    chmodSync(join(bin, `docker-credential-${name}`), 0o755);
  };
  const lookup = (files: AuthFileSpec[]) =>
    new CredentialLookup(files, (line) => logs.push(line), { ...process.env, PATH: `${bin}:/usr/bin:/bin` });

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'ici-creds-'));
    bin = join(dir, 'bin');
    mkdirSync(bin);
    // Answers for r.example (password) and tok.example (identity token); anything else is not found.
    helper(
      'store',
      'server=$(cat)\ncase "$server" in\n' +
        '  r.example) echo \'{"ServerURL":"r.example","Username":"helper-user","Secret":"helper-pw"}\';;\n' +
        '  tok.example) echo \'{"ServerURL":"tok.example","Username":"<token>","Secret":"refresh-2"}\';;\n' +
        '  https://index.docker.io/v1/) echo \'{"Username":"hub","Secret":"hub-pw"}\';;\n' +
        '  *) echo "credentials not found in native keychain"; exit 1;;\nesac',
    );
    helper('broken', 'echo "dbus: no session" >&2; exit 2');
    // Failing helpers that print the secret on stdout anyway.
    helper(
      'leaky',
      'echo \'{"Username":"u","Secret":"leaked-helper-secret"}\'; echo "keyring locked" >&2; exit 1',
    );
    helper('leaky-silent', 'echo "leaked-helper-secret"; exit 3');
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('first file with an answer wins; within a file the longest host/path prefix, then the host', async () => {
    const first = file('first.json', { auths: { 'r.example/team/app': { auth: b64('app:1') } } });
    const second = file('second.json', {
      auths: { 'r.example/team': { auth: b64('team:2') }, 'r.example': { auth: b64('host:3') } },
    });
    const l = lookup([first, second, { path: join(dir, 'missing.json') }]);
    expect(await l.find('r.example', 'team/app')).toEqual({
      credential: { username: 'app', password: '1' },
      source: `${first.path} (entry r.example/team/app)`,
    });
    expect((await l.find('r.example', 'team/other'))?.source).toBe(`${second.path} (entry r.example/team)`);
    expect((await l.find('r.example', 'else/x'))?.credential.username).toBe('host');
    expect(await l.find('q.example', 'x')).toBeUndefined();
  });

  it('a credHelpers entry decides its file; "not found" moves on to the next file', async () => {
    const helpers = file('helpers.json', {
      auths: { 'r.example': { auth: b64('ignored:x') } },
      credHelpers: { 'r.example': 'store', 'n.example': 'store' },
    });
    const later = file('later.json', { auths: { 'n.example': { auth: b64('later:4') } } });
    const l = lookup([helpers, later]);
    expect(await l.find('r.example', 'a/b')).toEqual({
      credential: { username: 'helper-user', password: 'helper-pw' },
      source: `docker-credential-store (credHelpers in ${helpers.path})`,
    });
    expect((await l.find('n.example', 'a'))?.source).toBe(`${later.path} (entry n.example)`);
  });

  it('credsStore answers for registries without an entry; <token> means an identity token; Docker Hub is asked by its index URL', async () => {
    const docker = file('config.json', { auths: { 'tok.example': {} }, credsStore: 'store' });
    const l = lookup([docker]);
    expect(await l.find('tok.example', 'x')).toEqual({
      credential: { username: '', password: '', identityToken: 'refresh-2' },
      source: `docker-credential-store (credsStore in ${docker.path})`,
    });
    expect((await l.find('docker.io', 'library/busybox'))?.credential).toEqual({
      username: 'hub',
      password: 'hub-pw',
    });
    expect(await l.find('z.example', 'x')).toBeUndefined();
  });

  it('a failing helper: its stdout is never quoted, and a Secret in it is masked before the error is made', async () => {
    const masked: string[] = [];
    const helpers = file('leaky.json', {
      credHelpers: { 'l.example': 'leaky', 's.example': 'leaky-silent' },
    });
    const l = new CredentialLookup(
      [helpers],
      (line) => logs.push(line),
      { ...process.env, PATH: `${bin}:/usr/bin:/bin` },
      (secret) => masked.push(secret),
    );
    const leaky = await l.find('l.example', 'x').catch((e: unknown) => e);
    expect(String(leaky)).toContain('docker-credential-leaky get l.example failed (exit 1): keyring locked.');
    expect(masked).toEqual(['leaked-helper-secret']);
    const silent = await l.find('s.example', 'x').catch((e: unknown) => e);
    expect(String(silent)).toContain(
      'docker-credential-leaky-silent get s.example failed (exit 3) (its stdout is not shown: it may hold a secret).',
    );
    expect(String(silent)).not.toContain('leaked-helper-secret');
  });

  it('a helper that is not installed means anonymous (said in the log); one that fails is an error naming it', async () => {
    const missing = file('missing-helper.json', { credHelpers: { 'm.example': 'nosuch' } });
    expect(await lookup([missing]).find('m.example', 'x')).toBeUndefined();
    expect(logs).toContain(
      `m.example: docker-credential-nosuch (credHelpers in ${missing.path}) is not on PATH; looking further.`,
    );
    const broken = file('broken-helper.json', { credHelpers: { 'b.example': 'broken' } });
    await expect(lookup([broken]).find('b.example', 'x')).rejects.toThrow(
      'docker-credential-broken get b.example failed (exit 2): dbus: no session.',
    );
    const hostile = file('hostile.json', { credHelpers: { 'h.example': '../../bin/sh' } });
    await expect(lookup([hostile]).find('h.example', 'x')).rejects.toThrow(
      "credential helper '../../bin/sh' is not a valid helper name.",
    );
  });

  it('a broken auth-file input is the input mistake; another broken file is named', async () => {
    const bad = file('bad.json', '{ not json');
    await expect(lookup([{ ...bad, fromInput: true }]).find('r.example', 'x')).rejects.toThrow(
      `Input 'auth-file': cannot read ${bad.path}:`,
    );
    await expect(lookup([bad]).find('r.example', 'x')).rejects.toThrow(
      `cannot read the auth file ${bad.path}:`,
    );
    await expect(
      lookup([{ path: join(dir, 'absent.json'), fromInput: true }]).find('r.example', 'x'),
    ).rejects.toThrow("Input 'auth-file': cannot read");
  });

  it('the system file is skipped when others can read it', async () => {
    const open = file('system.json', { auths: { 'r.example': { auth: b64('sys:5') } } });
    chmodSync(open.path, 0o644);
    expect(await lookup([{ ...open, ownerOnly: true }]).find('r.example', 'x')).toBeUndefined();
    chmodSync(open.path, 0o600);
    expect((await lookup([{ ...open, ownerOnly: true }]).find('r.example', 'x'))?.credential.username).toBe(
      'sys',
    );
  });

  it('inputs win for destinations and a source on their registry; repositories of one registry needing two logins are refused', async () => {
    const host = new CliHost({ inputs: new MapInputSource({}), log: () => undefined, out: () => undefined });
    const both = file('both.json', {
      auths: {
        'r.example/a': { auth: b64('a:1') },
        'r.example/b': { auth: b64('b:2') },
        's.example': { auth: b64('s:3') },
      },
    });
    const inputs = (extra: Record<string, string>) =>
      readInputs(
        new MapInputSource({
          source: 'docker://s.example/src/app:1',
          tags: 'v1',
          repositories: 'r.example/a/x',
          ...extra,
        }),
      );
    const given = await resolveCredentials(
      host,
      inputs({ username: 'u', password: 'pw', repositories: 'r.example/a/x, s.example/dst' }),
      { registry: 's.example', repository: 'src/app' },
      lookup([both]),
    );
    expect(given.destinations.get('r.example')).toEqual({ username: 'u', password: 'pw' });
    expect(given.source).toEqual({ username: 'u', password: 'pw' });
    const found = await resolveCredentials(
      host,
      inputs({}),
      { registry: 's.example', repository: 'src/app' },
      lookup([both]),
    );
    expect(found.destinations.get('r.example')?.username).toBe('a');
    expect(found.source?.username).toBe('s');
    await expect(
      resolveCredentials(
        host,
        inputs({ repositories: 'r.example/a/x, r.example/b/y' }),
        undefined,
        lookup([both]),
      ),
    ).rejects.toThrow(
      /Input 'repositories': r\.example\/a\/x and r\.example\/b\/y have different logins .* push them in separate steps\./,
    );
  });
});
