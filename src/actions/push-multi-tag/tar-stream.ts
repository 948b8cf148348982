/**
 * A forward-only tar reader for a stream (a Docker engine's image export): each entry's body is handed over as
 * it arrives, so a multi-gigabyte layer never sits in memory or in a temporary copy. Reads what Go's archive/tar
 * and GNU tar write: ustar names with prefix, PAX `path`/`linkpath`/`size` records, GNU long names, base-256
 * sizes. Everything in the stream is someone else's: headers are checksummed and sizes bounded by the stream.
 */

export type TarEntryType = 'file' | 'directory' | 'symlink' | 'hardlink' | 'other';

export interface TarEntry {
  /** The path as written, without a leading `./`. */
  name: string;
  type: TarEntryType;
  size: number;
  /** The target of a symlink or hard link. */
  linkname: string;
}

const BLOCK = 512;
/** Metadata entries (PAX records, GNU long names) are small; a huge one is a broken or hostile stream. */
const METADATA_LIMIT = 1024 * 1024;

/** Exact reads from an async stream of Buffers. */
class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private ended = false;

  constructor(private readonly source: AsyncIterator<Buffer>) {}

  private async fill(n: number): Promise<void> {
    while (this.buffered < n && !this.ended) {
      const next = await this.source.next();
      if (next.done) this.ended = true;
      else if (next.value.length > 0) {
        this.chunks.push(next.value);
        this.buffered += next.value.length;
      }
    }
  }

  /** Up to `max` bytes (at least one unless the stream ended), without copying when a chunk suffices. */
  private async some(max: number): Promise<Buffer> {
    await this.fill(1);
    const head = this.chunks[0];
    if (!head) return Buffer.alloc(0);
    if (head.length <= max) {
      this.chunks.shift();
      this.buffered -= head.length;
      return head;
    }
    this.chunks[0] = head.subarray(max);
    this.buffered -= max;
    return head.subarray(0, max);
  }

  /** Exactly n bytes, or an empty Buffer when the stream ended before the first of them. */
  async read(n: number): Promise<Buffer> {
    await this.fill(n);
    if (this.buffered === 0) return Buffer.alloc(0);
    if (this.buffered < n) throw new Error('the tar stream ends in the middle of an entry.');
    const parts: Buffer[] = [];
    for (let left = n; left > 0;) {
      const part = await this.some(left);
      parts.push(part);
      left -= part.length;
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  }

  /** The next n bytes as they arrive. */
  async *take(n: number): AsyncGenerator<Buffer> {
    for (let left = n; left > 0;) {
      const part = await this.some(Math.min(left, 1024 * 1024));
      if (part.length === 0) throw new Error('the tar stream ends in the middle of an entry.');
      left -= part.length;
      yield part;
    }
  }
}

function text(block: Buffer, offset: number, length: number): string {
  const field = block.subarray(offset, offset + length);
  const end = field.indexOf(0);
  return field.subarray(0, end < 0 ? field.length : end).toString('utf8');
}

function number(block: Buffer, offset: number, length: number): number {
  const field = block.subarray(offset, offset + length);
  if (field[0]! & 0x80) {
    // base-256 (GNU): big-endian after the marker bit; a value beyond 2^53 is not a real entry.
    let value = field[0]! & 0x7f;
    for (const byte of field.subarray(1)) value = value * 256 + byte;
    if (!Number.isSafeInteger(value)) throw new Error('a tar header holds an impossible size.');
    return value;
  }
  const digits = text(block, offset, length).trim();
  if (!/^[0-7]*$/.test(digits)) throw new Error('a tar header holds a malformed number.');
  return digits ? parseInt(digits, 8) : 0;
}

/** Whether `block` is a tar header: its checksum is right (every tar format has one; v7 has no magic). */
export function checksumOk(block: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
  try {
    return sum === number(block, 148, 8);
  } catch {
    // No number where the checksum goes (an HTML error page): no tar header, not a damaged one.
    return false;
  }
}

function parsePax(data: Buffer): Record<string, string> {
  const records: Record<string, string> = {};
  for (let at = 0; at < data.length;) {
    const space = data.indexOf(0x20, at);
    const length = space > at ? Number(data.subarray(at, space).toString('ascii')) : NaN;
    if (!Number.isSafeInteger(length) || length <= 0 || at + length > data.length) {
      throw new Error('a tar PAX header is malformed.');
    }
    const record = data.subarray(space + 1, at + length - 1).toString('utf8');
    const eq = record.indexOf('=');
    if (eq > 0) records[record.slice(0, eq)] = record.slice(eq + 1);
    at += length;
  }
  return records;
}

const TYPES: Record<string, TarEntryType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file',
  '5': 'directory',
  '2': 'symlink',
  '1': 'hardlink',
};

/** Link, symlink, character device, block device, directory, FIFO: a header and nothing after it. */
const HEADER_ONLY = new Set(['1', '2', '3', '4', '5', '6']);

/**
 * Calls `onEntry` for every entry, in order; its body must be consumed or left alone (the rest is skipped).
 * Resolves at the end-of-archive blocks (or at the end of the stream after a whole entry).
 */
export async function readTar(
  stream: AsyncIterable<Buffer>,
  onEntry: (entry: TarEntry, body: AsyncIterable<Buffer>) => Promise<void>,
): Promise<void> {
  const reader = new ByteReader(stream[Symbol.asyncIterator]());
  let pax: Record<string, string> = {};
  let longName: string | undefined;
  let longLink: string | undefined;
  const metadata = async (size: number): Promise<Buffer> => {
    if (size > METADATA_LIMIT) throw new Error('a tar metadata entry is implausibly large.');
    const data = await reader.read(size);
    await reader.read(padding(size));
    return data;
  };
  for (;;) {
    const header = await reader.read(BLOCK);
    if (header.length === 0 || header.every((b) => b === 0)) return;
    if (!checksumOk(header)) throw new Error('the stream is not a tar archive (bad header checksum).');
    const flag = String.fromCharCode(header[156]!);
    let size = number(header, 124, 12);
    if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
      const data = await metadata(size);
      if (flag === 'x') pax = parsePax(data);
      else if (flag === 'L') longName = text(data, 0, data.length);
      else if (flag === 'K') longLink = text(data, 0, data.length);
      continue;
    }
    // Only POSIX `ustar\0` headers have a prefix; GNU's `ustar ` keeps times there, which Go and GNU tar never
    // read as part of the name.
    const prefix = header.subarray(257, 263).toString('latin1') === 'ustar\0' ? text(header, 345, 155) : '';
    const rawName =
      pax.path ?? longName ?? (prefix ? `${prefix}/${text(header, 0, 100)}` : text(header, 0, 100));
    if (pax.size !== undefined) {
      size = Number(pax.size);
      if (!Number.isSafeInteger(size) || size < 0) throw new Error('a tar PAX size is malformed.');
    }
    // An old-style file entry named like a directory is one to Go and GNU tar (and so has no data).
    const kind = flag === '\0' && rawName.endsWith('/') ? '5' : flag;
    // Go's archive/tar (what docker load reads with) and GNU tar read no data after a link, directory, device
    // or FIFO whatever its size says; skipping it would hide from us the entries they read there.
    if (HEADER_ONLY.has(kind) && size !== 0) {
      throw new Error(`a tar ${TYPES[kind] ?? 'device or FIFO'} entry claims ${size} bytes of data.`);
    }
    // A GNU sparse file's map goes on in blocks after its header (old GNU) or at the start of its data (PAX, with
    // its real name in GNU.sparse.name): Go reads it, we would take it for data.
    if (kind === 'S' || Object.keys(pax).some((key) => key.startsWith('GNU.sparse.'))) {
      throw new Error('a tar entry is a GNU sparse file; an image export holds none.');
    }
    const entry: TarEntry = {
      name: rawName.replace(/^(\.\/)+/, ''),
      type: TYPES[kind] ?? 'other',
      size,
      linkname: pax.linkpath ?? longLink ?? text(header, 157, 100),
    };
    pax = {};
    longName = undefined;
    longLink = undefined;
    let left = size;
    const body = (async function* () {
      for await (const part of reader.take(left)) {
        left -= part.length;
        yield part;
      }
    })();
    await onEntry(entry, body);
    // Whatever the handler did not read is skipped, then the block padding.
    for await (const part of reader.take(left)) left -= part.length;
    await reader.read(padding(size));
  }
}

function padding(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}
