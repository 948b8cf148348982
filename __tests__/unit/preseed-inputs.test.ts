import { describe, expect, it } from '@jest/globals';
import { loadActionMetadata } from '../../src/core/action-metadata.js';
import { InputError, MapInputSource } from '../../src/core/inputs.js';
import { RecordingInputSource } from '../support/recording-input-source.js';
import { classifyImage, imageUrlSecrets } from '../../src/actions/preseed-podman-vm/image-source.js';
import { readInputs } from '../../src/actions/preseed-podman-vm/inputs.js';
import { REPO_ROOT } from '../support/harness.js';

const meta = loadActionMetadata('preseed-podman-vm', REPO_ROOT);
const defaults = Object.fromEntries(
  Object.entries(meta.inputs)
    .filter(([, spec]) => spec.default !== undefined)
    .map(([name, spec]) => [name, spec.default]),
);

describe('preseed-podman-vm inputs', () => {
  it('reads exactly the inputs action.yml declares', () => {
    const src = new RecordingInputSource(new MapInputSource(defaults));
    readInputs(src);
    expect([...src.read].sort()).toEqual(Object.keys(meta.inputs).sort());
  });

  it('parses the action.yml defaults', () => {
    expect(readInputs(new MapInputSource(defaults))).toEqual({
      image: undefined,
      vmType: 'auto',
      arch: 'auto',
      cache: true,
      cacheKeyPrefix: 'podman-machine-os',
      cacheScope: 'image',
      setDefault: true,
      init: false,
      machineName: 'podman-machine-default',
      cpus: undefined,
      memoryMiB: undefined,
      diskSizeGiB: undefined,
      rootful: false,
      start: false,
      cleanup: true,
    });
  });

  it('accepts cache-scope machine with init (without init it is a mistake, below)', () => {
    const inputs = readInputs(new MapInputSource({ ...defaults, 'cache-scope': 'machine', init: 'true' }));
    expect(inputs).toMatchObject({ cacheScope: 'machine', init: true });
  });

  it('names the input in every mistake', () => {
    const bad: Array<[Record<string, string>, string]> = [
      [{ 'vm-type': 'vbox' }, 'vm-type'],
      [{ arch: 'riscv64' }, 'arch'],
      [{ start: 'true' }, 'start'],
      [{ cpus: '0' }, 'cpus'],
      [{ memory: 'lots' }, 'memory'],
      // Before: read as 1e+21 and passed to podman as `--cpus 1e+21`; the next one as 9007199254740992.
      [{ cpus: '1000000000000000000000' }, 'cpus'],
      [{ 'disk-size': '9007199254740993' }, 'disk-size'],
      [{ 'cache-scope': 'machine' }, 'cache-scope'],
    ];
    for (const [values, input] of bad) {
      expect(() => readInputs(new MapInputSource({ ...defaults, ...values }))).toThrow(
        expect.objectContaining({ input }) as unknown as InputError,
      );
    }
  });
});

describe('machine-name', () => {
  it('takes the names podman takes', () => {
    for (const name of ['ci-vm', 'podman-machine-default', 'a', 'vm_1.2', 'x'.repeat(30)]) {
      expect(readInputs(new MapInputSource({ ...defaults, 'machine-name': name })).machineName).toBe(name);
    }
  });

  // Before: the name went last into `podman machine init ... <name>`, so `--now` started a machine and
  // `--rootful` made it rootful; a newline reached the log in `Removed podman machine <name>.`
  it('refuses a name podman would read as an option, or refuse, before it reaches an argv or the log', () => {
    for (const name of [
      '--now',
      '-h',
      '--rootful',
      'vm\n::stop-commands::x',
      'a b',
      'ä',
      '.vm',
      'x'.repeat(31),
    ]) {
      expect(() =>
        readInputs(new MapInputSource({ ...defaults, init: 'true', 'machine-name': name })),
      ).toThrow(expect.objectContaining({ input: 'machine-name' }) as unknown as InputError);
    }
  });
});

describe('image input', () => {
  it('tells references, URLs and files apart', () => {
    expect(classifyImage('docker://quay.io/podman/machine-os:5.3')).toEqual({
      kind: 'registry',
      reference: 'quay.io/podman/machine-os:5.3',
      parsed: { registry: 'quay.io', repository: 'podman/machine-os', tag: '5.3' },
    });
    expect(classifyImage('https://example.com/a/disk.qcow2.zst')).toEqual({
      kind: 'url',
      url: 'https://example.com/a/disk.qcow2.zst',
    });
    expect(classifyImage(`${REPO_ROOT}/package.json`)).toEqual({
      kind: 'file',
      path: `${REPO_ROOT}/package.json`,
    });
  });

  it("reads podman 4's stream names and stream-metadata URLs as Fedora CoreOS streams", () => {
    expect(classifyImage('testing')).toEqual({
      kind: 'fcos',
      stream: 'testing',
      streamUrl: 'https://builds.coreos.fedoraproject.org/streams/testing.json',
    });
    expect(classifyImage('stable')).toMatchObject({ kind: 'fcos', stream: 'stable' });
    expect(classifyImage('http://mirror.example:8080/fcos/streams/next.json')).toEqual({
      kind: 'fcos',
      stream: 'next',
      streamUrl: 'http://mirror.example:8080/fcos/streams/next.json',
    });
  });

  it("a URL's user:password@ is masked before the input is printed; a malformed %-escape in it is refused without echoing it", () => {
    const secrets = (text: string) => imageUrlSecrets(classifyImage(text), text);
    expect(secrets('https://bob:p%40ss@mirror.example/disk.raw')).toEqual([
      Buffer.from('bob:p@ss').toString('base64'),
      'p@ss',
      'p%40ss',
    ]);
    expect(secrets('https://mirror.example/disk.raw')).toEqual([]);
    expect(() => classifyImage('https://bob:p%zzss@mirror.example/disk.raw')).toThrow(
      "Input 'image': the URL's user or password has a malformed %-escape; write % as %25.",
    );
  });

  // Before: only the parsed (`abc%2Fdef%3D;x`) and decoded (`abc/def=;x`) forms were masked, and the log line
  // that prints the input showed the password as written.
  it('masks a password as the input writes it when the URL parser escapes more of it (`=`, `;`)', () => {
    const text = 'https://bob:abc%2Fdef=;x@mirror.example/streams/testing.json';
    expect(imageUrlSecrets(classifyImage(text), text)).toEqual([
      Buffer.from('bob:abc/def=;x').toString('base64'),
      'abc/def=;x',
      'abc%2Fdef%3D%3Bx',
      'abc%2Fdef=;x',
    ]);
    // A user without a password has none to mask but the Basic value; an `@` in the path is no userinfo.
    const user = 'https://bob@mirror.example/a@b/disk.raw';
    expect(imageUrlSecrets(classifyImage(user), user)).toEqual([Buffer.from('bob:').toString('base64')]);
  });

  // Before: the message quoted the input whole, password included, before anything was masked.
  it('a URL that does not parse, or has another scheme, is refused without its user:password@', () => {
    expect(() => classifyImage('https://bob:s3cr@t@mirror.example:99999/streams/testing.json')).toThrow(
      "Input 'image': 'https://mirror.example:99999/streams/testing.json' is not a valid URL.",
    );
    expect(() => classifyImage('ftp://bob:s3cret@mirror.example/disk.raw')).toThrow(
      "Input 'image': unsupported scheme in 'ftp://mirror.example/disk.raw': use docker://, https:// or a file path.",
    );
  });

  it('rejects missing files and other schemes', () => {
    expect(() => classifyImage('/no/such/disk.qcow2.zst')).toThrow(/Input 'image': the file \/no\/such/);
    expect(() => classifyImage('ftp://host/disk')).toThrow(/unsupported scheme/);
    expect(() => classifyImage('docker://')).toThrow(InputError);
  });
});
