/**
 * Watches an uncompressed tar stream on its way to `tar -x` and learns what it holds: every member's name and
 * type (so a failed extraction can be undone exactly) and, on request, the sha256 of each regular file (so a
 * consumer can verify a restored file without reading it back from disk). The bytes pass through unchanged.
 *
 * Reads the formats @actions/cache writes (`tar --posix`: ustar headers with pax `x` records) plus GNU long
 * names, which covers what GNU and BSD tar produce.
 */
import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';

const BLOCK = 512;

export type MemberType = 'file' | 'dir' | 'other';

export interface TarMember {
  name: string;
  type: MemberType;
  size: number;
  /** sha256 hex of the content, for regular files when hashing was asked for. */
  sha256?: string;
}

interface Pending {
  /** Header fields that the next real header takes over (pax `x`, GNU `L`). */
  overrides: { path?: string; size?: number };
}

function cString(block: Buffer, start: number, length: number): string {
  const end = block.indexOf(0, start);
  return block.toString('utf8', start, end === -1 || end > start + length ? start + length : end);
}

/** Octal, or base-256 (high bit set) for sizes of 8 GiB and more. */
function numeric(block: Buffer, start: number, length: number): number {
  if (block[start]! & 0x80) {
    let value = block[start]! & 0x7f;
    for (let i = start + 1; i < start + length; i++) value = value * 256 + block[i]!;
    return value;
  }
  const text = cString(block, start, length).trim();
  return text ? parseInt(text, 8) : 0;
}

function checksumOk(block: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
  return sum === numeric(block, 148, 8);
}

/** pax records: `<length> <key>=<value>\n`, repeated. */
function parsePax(data: Buffer): { path?: string; size?: number } {
  const result: { path?: string; size?: number } = {};
  let offset = 0;
  while (offset < data.length) {
    const space = data.indexOf(0x20, offset);
    if (space === -1) break;
    const length = Number(data.toString('utf8', offset, space));
    if (!Number.isInteger(length) || length <= 0) break;
    const record = data.toString('utf8', space + 1, offset + length - 1);
    const eq = record.indexOf('=');
    const key = record.slice(0, eq);
    const value = record.slice(eq + 1);
    if (key === 'path') result.path = value;
    else if (key === 'size') result.size = Number(value);
    offset += length;
  }
  return result;
}

function memberType(flag: string): MemberType | 'meta' {
  switch (flag) {
    case '0':
    case '\0':
    case '':
    case '7':
      return 'file';
    case '5':
      return 'dir';
    case 'x':
    case 'g':
    case 'L':
    case 'K':
      return 'meta';
    default:
      return 'other';
  }
}

export class TarMemberWatcher extends Transform {
  readonly members: TarMember[] = [];
  private header = Buffer.alloc(0);
  /** Bytes of the current member's data (and padding) still to come. */
  private remaining = 0;
  private padding = 0;
  private hash: Hash | undefined;
  private current: TarMember | undefined;
  /** Content of a metadata member (pax or GNU long name) being collected. */
  private meta: { flag: string; chunks: Buffer[] } | undefined;
  private pending: Pending = { overrides: {} };
  /** Set once the end-of-archive block went by: the stream held a whole archive. */
  ended = false;
  /** Why the stream was not readable as tar, if it was not. */
  failure: Error | undefined;

  constructor(private readonly hashFiles: boolean) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.consume(chunk);
    } catch (error) {
      this.failure = error as Error;
      callback(this.failure);
      return;
    }
    callback(null, chunk);
  }

  private consume(chunk: Buffer): void {
    let offset = 0;
    while (offset < chunk.length && !this.ended) {
      if (this.remaining > 0) {
        const take = Math.min(this.remaining, chunk.length - offset);
        const data = chunk.subarray(offset, offset + take);
        this.hash?.update(data);
        this.meta?.chunks.push(Buffer.from(data));
        this.remaining -= take;
        offset += take;
        if (this.remaining === 0) this.finishData();
        continue;
      }
      if (this.padding > 0) {
        const take = Math.min(this.padding, chunk.length - offset);
        this.padding -= take;
        offset += take;
        continue;
      }
      const take = Math.min(BLOCK - this.header.length, chunk.length - offset);
      this.header = Buffer.concat([this.header, chunk.subarray(offset, offset + take)]);
      offset += take;
      if (this.header.length === BLOCK) {
        const block = this.header;
        this.header = Buffer.alloc(0);
        this.readHeader(block);
      }
    }
  }

  private readHeader(block: Buffer): void {
    if (block.every((b) => b === 0)) {
      // The first of the two zero blocks that end an archive; what follows is padding.
      this.ended = true;
      return;
    }
    if (!checksumOk(block)) throw new Error('not a tar stream (header checksum mismatch)');
    const flag = String.fromCharCode(block[156]!);
    const type = memberType(flag);
    const { overrides } = this.pending;
    const size = type === 'meta' ? numeric(block, 124, 12) : (overrides.size ?? numeric(block, 124, 12));
    const dataSize = type === 'dir' ? 0 : size;
    this.remaining = dataSize;
    this.padding = (BLOCK - (dataSize % BLOCK)) % BLOCK;
    if (type === 'meta') {
      this.meta = { flag, chunks: [] };
    } else {
      const prefix = block.toString('utf8', 257, 262) === 'ustar' ? cString(block, 345, 155) : '';
      const base = cString(block, 0, 100);
      const name = overrides.path ?? (prefix ? `${prefix}/${base}` : base);
      this.current = { name, type, size };
      this.members.push(this.current);
      this.pending = { overrides: {} };
      this.hash = type === 'file' && this.hashFiles ? createHash('sha256') : undefined;
    }
    if (this.remaining === 0) this.finishData();
  }

  private finishData(): void {
    if (this.meta) {
      const data = Buffer.concat(this.meta.chunks);
      if (this.meta.flag === 'x') Object.assign(this.pending.overrides, parsePax(data));
      else if (this.meta.flag === 'L') this.pending.overrides.path = cString(data, 0, data.length);
      this.meta = undefined;
      return;
    }
    if (this.current && this.hash) this.current.sha256 = this.hash.digest('hex');
    this.hash = undefined;
    this.current = undefined;
  }
}
