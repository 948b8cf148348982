import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImageSource } from '../../src/actions/push-multi-tag/source.js';
import { runAction } from '../support/harness.js';
import { generateLayout, type GeneratedLayout } from '../support/oci-layout.js';
import { startRegistry, type RegistryService } from '../support/registry.js';

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: 120_000, env }, (error, stdout, stderr) =>
      error ? reject(new Error(`${cmd} ${args.join(' ')}: ${stderr}`)) : resolve(stdout),
    );
  });
}

interface RemoteImage {
  digest: string;
  config: string;
  layers: string[];
}

async function remoteImage(ref: string): Promise<RemoteImage> {
  const raw = JSON.parse(
    await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${ref}`]),
  ) as {
    config: { digest: string };
    layers: { digest: string }[];
  };
  const info = JSON.parse(
    await run('skopeo', ['inspect', '--no-tags', '--tls-verify=false', `docker://${ref}`]),
  ) as {
    Digest: string;
  };
  return { digest: info.Digest, config: raw.config.digest, layers: raw.layers.map((l) => l.digest) };
}

describe('push-multi-tag sources (skopeo/podman exports, real docker-registry)', () => {
  let work: string;
  let layout: GeneratedLayout;
  let registry: RegistryService;
  let storageEnv: Record<string, string>;
  let configDigest: string;

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), 'ici-src-'));
    layout = generateLayout(join(work, 'layout'), { layers: [300_000, 100_000] });
    configDigest = layout.blobs.find((b) => b.mediaType.includes('config'))!.digest;
    registry = await startRegistry();
    // A private containers-storage (vfs) for this test only, filled from the generated layout.
    const storageConf = join(work, 'storage.conf');
    writeFileSync(
      storageConf,
      `[storage]\ndriver = "vfs"\ngraphroot = "${join(work, 'graph')}"\nrunroot = "${join(work, 'run')}"\n`,
    );
    storageEnv = { CONTAINERS_STORAGE_CONF: storageConf };
    await run(
      'skopeo',
      ['copy', '--quiet', layout.transportRef, 'containers-storage:localhost/pmt/app:built'],
      {
        ...process.env,
        ...storageEnv,
      },
    );
  });
  afterAll(async () => {
    await run('podman', ['rmi', '-a', '-f'], { ...process.env, ...storageEnv }).catch(() => undefined);
    await registry?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  const push = (source: string, repository: string, extra: Record<string, string> = {}, env = {}) =>
    runAction({
      action: 'push-multi-tag',
      inputs: {
        source,
        repositories: `${registry.host}/${repository}`,
        tags: 'one, two',
        'insecure-registries': registry.host,
        ...extra,
      },
      env,
    });

  it('a bare name is a containers-storage image, exported once and compressed (gzip by default)', async () => {
    const r = await push('localhost/pmt/app:built', 'src/storage', {}, storageEnv);
    expect(r.errors).toEqual([]);
    expect(r.main.exitCode).toBe(0);
    const remote = await remoteImage(`${registry.host}/src/storage:two`);
    expect(remote.digest).toBe(r.outputs.digest);
    expect(remote.config).toBe(configDigest);
    const raw = JSON.parse(
      await run('skopeo', [
        'inspect',
        '--raw',
        '--tls-verify=false',
        `docker://${registry.host}/src/storage:one`,
      ]),
    ) as {
      layers: { mediaType: string }[];
    };
    expect(raw.layers.map((l) => l.mediaType)).toEqual(
      layout.blobs.slice(1).map(() => 'application/vnd.oci.image.layer.v1.tar+gzip'),
    );
  });

  // `podman build -t app` stores localhost/app:latest, and redhat-actions/buildah-build outputs `app:latest`;
  // skopeo alone reads such a short name as docker.io/library/app and finds nothing.
  it.each([
    ['pmt/app:built', 'localhost/pmt/app:built'],
    ['shortapp', 'localhost/shortapp:latest'],
  ])('a short name (%s) finds %s in local storage, as podman resolves it', async (short, stored) => {
    if (stored !== 'localhost/pmt/app:built') {
      await run('skopeo', ['copy', '--quiet', layout.transportRef, `containers-storage:${stored}`], {
        ...process.env,
        ...storageEnv,
      });
    }
    const r = await push(short, 'src/short', {}, storageEnv);
    expect(r.errors).toEqual([]);
    expect(r.main.exitCode).toBe(0);
    expect(r.log).toMatch(
      new RegExp(`${short} is image [0-9a-f]{12} in local storage \\(resolved by podman`),
    );
    expect((await remoteImage(`${registry.host}/src/short:one`)).config).toBe(configDigest);
  });

  // Before short names were resolved, skopeo read `dupe` as docker.io/library/dupe; podman prefers localhost/dupe.
  // With both stored, silently switching to podman's pick would push another image than yesterday's step did.
  it('a short name that podman and skopeo read as two different stored images is refused, naming both', async () => {
    const other = generateLayout(join(work, 'other'), { layers: [1000] });
    const storage = { ...process.env, ...storageEnv };
    await run(
      'skopeo',
      ['copy', '--quiet', layout.transportRef, 'containers-storage:localhost/dupe:latest'],
      storage,
    );
    await run(
      'skopeo',
      ['copy', '--quiet', other.transportRef, 'containers-storage:docker.io/library/dupe:latest'],
      storage,
    );
    const r = await push('dupe', 'src/dupe', {}, storageEnv);
    expect(r.main.exitCode).not.toBe(0);
    expect(r.errors.join('\n')).toMatch(
      /Input 'source': the containers-storage name 'dupe' names two images in local storage: podman resolves it to image [0-9a-f]{12} .*skopeo reads it as docker\.io\/library\/dupe:latest \(image [0-9a-f]{12}\)\. Write the full name/,
    );
    // The same image under both names is no ambiguity.
    await run('podman', ['tag', 'localhost/dupe:latest', 'docker.io/library/dupe:latest'], storage);
    expect((await push('dupe', 'src/dupe', {}, storageEnv)).main.exitCode).toBe(0);
  });

  // podman reads containers.conf, skopeo does not: with a broken one, the lookup's own complaint is what explains
  // skopeo's "no such image" for docker.io/library/pmt/app.
  it("says why podman could not look a short name up, instead of only skopeo's 'no such image'", async () => {
    const conf = join(work, 'broken-containers.conf');
    writeFileSync(conf, '[engine\n');
    const r = await push('pmt/app:built', 'src/broken', {}, { ...storageEnv, CONTAINERS_CONF: conf });
    expect(r.main.exitCode).not.toBe(0);
    expect(r.log).toMatch(/podman could not look up pmt\/app:built \(exit \d+: .*broken-containers\.conf/);
  });

  const STORED = { transport: 'containers-storage', location: 'pmt/app:built' } as const;
  const lookupOptions = () => ({
    scratch: mkdtempSync(join(work, 'scratch-')),
    env: { ...process.env, ...storageEnv },
    timeoutMs: 60_000,
    tlsVerify: true,
  });

  /**
   * The storage's lock, held by another process until `release`. The lock is real: containers/storage takes fcntl
   * locks, and python's lockf holds one on the storage's storage.lock as a busy or hung podman would.
   */
  async function holdStorageLock(): Promise<{ release(): Promise<void> }> {
    const holder = spawn(
      'python3',
      [
        '-c',
        'import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\nfcntl.lockf(fd, fcntl.LOCK_EX)\nprint("locked", flush=True)\nsys.stdin.read()',
        join(work, 'graph', 'storage.lock'),
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    const exited = new Promise((resolve) => holder.once('exit', resolve));
    await new Promise((resolve, reject) => {
      holder.stdout.once('data', resolve);
      holder.once('exit', reject);
    });
    return {
      release: async () => {
        holder.stdin.end();
        await exited;
      },
    };
  }

  // A lookup that hangs is another matter: skopeo would wait for the same storage lock (checked by hand: skopeo
  // inspect blocks as podman does), up to the export's 30 minutes.
  it('a lookup that gets no answer (the storage lock held by another process) fails the read within the lookup timeout, saying why', async () => {
    const lock = await holdStorageLock();
    try {
      const failure = await openImageSource(STORED, {
        ...lookupOptions(),
        lookupTimeoutMs: 300,
        log: () => undefined,
      }).then(
        () => new Error('read'),
        (error: Error) => error,
      );
      expect(failure.message).toBe(
        'cannot read the source containers-storage:pmt/app:built: podman did not say within 0.3 s what pmt/app:built is in local storage; a process holding its lock (a podman, buildah or skopeo that hangs) is the usual cause, and the export would wait for that lock too.',
      );
    } finally {
      await lock.release();
    }
  }, 20_000);

  // On a shared runner another job's podman or buildah holds the lock for a while (a big pull, a commit): the
  // lookup says why it waits, and goes on once the lock is free, as the export would.
  it('a lookup that waits for a storage lock held for a while says why, then reads the image once the lock is released', async () => {
    const lock = await holdStorageLock();
    try {
      const log: string[] = [];
      const source = await openImageSource(STORED, {
        ...lookupOptions(),
        lookupNoticeMs: 200,
        lookupTimeoutMs: 15_000,
        log: (line) => {
          log.push(line);
          // The other job finishes once the lookup has said it waits.
          if (/has not said in 0\.2 s/.test(line)) void lock.release();
        },
      });
      expect(log[0]).toBe(
        'podman has not said in 0.2 s what pmt/app:built is in local storage: waiting for its lock (another podman, buildah or skopeo holds it?), up to 15 s',
      );
      expect(source.blobs.map((b) => b.digest)).toContain(configDigest);
    } finally {
      await lock.release();
    }
  }, 30_000);

  // The lookup is a courtesy: a podman that cannot be run at all (here: not executable) is said in one line, and
  // skopeo gets its turn, instead of the step ending with the lookup's bare error.
  it('falls back to skopeo, saying why, when podman cannot be run for the lookup', async () => {
    // Only these two on PATH: a podman that is no executable, and the real skopeo.
    const bin = join(work, 'bin-broken-podman');
    mkdirSync(bin, { recursive: true });
    writeFileSync(join(bin, 'podman'), '#!/bin/sh\nexit 0\n', { mode: 0o644 });
    symlinkSync('/usr/bin/skopeo', join(bin, 'skopeo'));
    const r = await push('pmt/app:built', 'src/noexec', {}, { ...storageEnv, PATH: bin });
    expect(r.log).toMatch(
      /podman could not look up pmt\/app:built \(.*EACCES.*\); reading it as skopeo does/,
    );
    expect(r.errors.join('\n')).toMatch(/no such image/);
  });

  it('compression=zstd compresses an uncompressed source with zstd', async () => {
    const r = await push(
      'containers-storage:localhost/pmt/app:built',
      'src/zstd',
      { compression: 'zstd' },
      storageEnv,
    );
    expect(r.main.exitCode).toBe(0);
    const raw = JSON.parse(
      await run('skopeo', [
        'inspect',
        '--raw',
        '--tls-verify=false',
        `docker://${registry.host}/src/zstd:one`,
      ]),
    ) as {
      layers: { mediaType: string }[];
    };
    expect(new Set(raw.layers.map((l) => l.mediaType))).toEqual(
      new Set(['application/vnd.oci.image.layer.v1.tar+zstd']),
    );
  });

  it('compression compresses an OCI layout with uncompressed layers, and leaves compressed ones alone', async () => {
    const plain = generateLayout(join(work, 'plain-layout'), { layers: [50_000], compress: false });
    const r = await push(plain.transportRef, 'src/layout-zstd', { compression: 'zstd' });
    expect(r.errors).toEqual([]);
    const raw = JSON.parse(
      await run('skopeo', [
        'inspect',
        '--raw',
        '--tls-verify=false',
        `docker://${registry.host}/src/layout-zstd:one`,
      ]),
    ) as { layers: { mediaType: string }[] };
    expect(new Set(raw.layers.map((l) => l.mediaType))).toEqual(
      new Set(['application/vnd.oci.image.layer.v1.tar+zstd']),
    );
    const untouched = await push(layout.transportRef, 'src/layout-gzip', { compression: 'zstd' });
    expect(untouched.outputs.digest).toBe(layout.digest);
  });

  it('oci-archive and docker-archive files', async () => {
    const ociArchive = join(work, 'image-oci.tar');
    await run('skopeo', ['copy', '--quiet', layout.transportRef, `oci-archive:${ociArchive}:rel`]);
    const fromOci = await push(`oci-archive:${ociArchive}:rel`, 'src/oci-archive');
    expect(fromOci.main.exitCode).toBe(0);
    expect(fromOci.outputs.digest).toBe(layout.digest);
    expect((await remoteImage(`${registry.host}/src/oci-archive:one`)).digest).toBe(layout.digest);

    const dockerArchive = join(work, 'image-docker.tar');
    await run('skopeo', [
      'copy',
      '--quiet',
      layout.transportRef,
      `docker-archive:${dockerArchive}:localhost/x:1`,
    ]);
    const fromDocker = await push(`docker-archive:${dockerArchive}`, 'src/docker-archive');
    expect(fromDocker.errors).toEqual([]);
    const remote = await remoteImage(`${registry.host}/src/docker-archive:two`);
    expect(remote.digest).toBe(fromDocker.outputs.digest);
    expect(remote.layers).toHaveLength(layout.blobs.length - 1);

    // An image named with a registry port and a tag: the path ends at the first colon (containers/image's rule).
    const named = join(work, 'image-named.tar');
    const name = 'registry.example:5000/org/app:v1';
    await run('skopeo', ['copy', '--quiet', layout.transportRef, `docker-archive:${named}:${name}`]);
    const fromNamed = await push(`docker-archive:${named}:${name}`, 'src/docker-archive-named');
    expect(fromNamed.errors).toEqual([]);
    expect(fromNamed.outputs.digest).toBe(fromDocker.outputs.digest);
  });

  it('docker:// copies registry to registry with the manifest unchanged, mounting on the same registry', async () => {
    await run('skopeo', [
      'copy',
      '--quiet',
      '--dest-tls-verify=false',
      layout.transportRef,
      `docker://${registry.host}/src/origin:v9`,
    ]);
    const r = await push(`docker://${registry.host}/src/origin:v9`, 'src/copied', { 'tls-verify': 'false' });
    expect(r.errors).toEqual([]);
    expect(r.outputs.digest).toBe(layout.digest);
    // Same registry: every blob is mounted from the source repository, none uploaded.
    expect(r.outputs['blobs-mounted']).toBe(String(layout.blobs.length));
    expect(r.outputs['blobs-uploaded']).toBe('0');
    expect((await remoteImage(`${registry.host}/src/copied:one`)).digest).toBe(layout.digest);
  });

  it('a containers-storage image of a remote podman service (CONTAINER_HOST) goes through podman save, unpacked in the scratch dir (not /var/tmp)', async () => {
    const conf = join(work, 'containers.conf');
    writeFileSync(conf, '[engine]\nruntime = "runc"\n\n[containers]\ndefault_ulimits = []\n');
    const sockDir = join(work, 'sock');
    mkdirSync(sockDir);
    const socket = join(sockDir, 'podman.sock');
    const env = { ...process.env, ...storageEnv, CONTAINERS_CONF: conf };
    const service = spawn('podman', ['system', 'service', '--time=0', `unix://${socket}`], {
      env,
      stdio: 'ignore',
    });
    try {
      for (let i = 0; i < 100; i++) {
        try {
          await run('podman', ['--url', `unix://${socket}`, 'version'], env);
          break;
        } catch {
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      }
      // The action's own process sees an empty local storage: only the service has the image.
      const emptyStorage = join(work, 'empty-storage.conf');
      writeFileSync(
        emptyStorage,
        `[storage]\ndriver = "vfs"\ngraphroot = "${join(work, 'graph2')}"\nrunroot = "${join(work, 'run2')}"\n`,
      );
      // skopeo unpacks the saved oci-archive into /var/tmp unless told otherwise, where a killed step leaves it:
      // the action's skopeo runs in a mount namespace where /var/tmp is read-only.
      const shims = join(work, 'shims');
      mkdirSync(shims);
      const skopeo = (await run('sh', ['-c', 'command -v skopeo'])).trim();
      writeFileSync(
        join(shims, 'skopeo'),
        `#!/bin/sh\nexec unshare -m sh -c 'mount -t tmpfs -o ro tmpfs /var/tmp && exec "$0" "$@"' ${skopeo} "$@"\n`,
        { mode: 0o755 },
      );
      const r = await push(
        'localhost/pmt/app:built',
        'src/remote',
        {},
        {
          CONTAINER_HOST: `unix://${socket}`,
          CONTAINERS_STORAGE_CONF: emptyStorage,
          PATH: `${shims}:${process.env.PATH}`,
        },
      );
      expect(r.errors).toEqual([]);
      expect(r.log).toContain('Saving localhost/pmt/app:built from the podman service');
      const remote = await remoteImage(`${registry.host}/src/remote:one`);
      expect(remote.digest).toBe(r.outputs.digest);
      expect(remote.config).toBe(configDigest);
    } finally {
      const exited = new Promise((resolve) => service.once('exit', resolve));
      service.kill('SIGTERM');
      await exited;
    }
  });
});
