/**
 * Watches an uncompressed tar stream on its way to `tar -x` and learns what it holds: every member's name, type
 * and link target (so a member can be refused before tar sees it, and a failed extraction undone exactly) and,
 * on request, the sha256 of each regular file (so a consumer can verify a restored file without reading it back
 * from disk). It only reads the chunks it is shown, and keeps none of them (the caller reuses its buffer).
 *
 * Reads the formats @actions/cache writes (`tar --posix`: ustar headers with pax `x` records) plus GNU long
 * names, which covers what GNU and BSD tar produce. A check of member names is only worth something if tar reads
 * the same members, so everything GNU tar could read differently from this parser is refused instead of guessed
 * at (a leading NUL in a number, sparse files, a second pax header, ...): archives that tar -c writes never hold
 * those.
 */
import { createHash, type Hash } from 'node:crypto';

const BLOCK = 512;
/** pax and GNU long-name records are a few hundred bytes; anything this large is not one. */
const MAX_META_BYTES = 1024 * 1024;

export type MemberType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'device' | 'fifo';

export interface TarMember {
  name: string;
  type: MemberType;
  size: number;
  /** The link target, as written in the archive (symlinks and hard links). */
  link?: string;
  /** sha256 hex of the content, for regular files when hashing was asked for. */
  sha256?: string;
}

/** The stream is not a tar archive this watcher reads the way tar does. */
export class TarFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TarFormatError';
  }
}

interface Overrides {
  path?: string;
  linkpath?: string;
  size?: number;
}

/**
 * Names are checked and undone by their text, and Node turns that text back into UTF-8 bytes for every path it
 * touches; so only names whose bytes ARE that UTF-8 can be checked: any other byte sequence (which a lenient
 * decoder would map to U+FFFD, making distinct names equal) is refused.
 */
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function nameText(bytes: Buffer): string {
  try {
    return utf8.decode(bytes);
  } catch {
    throw new TarFormatError('a member name or link target is not valid UTF-8');
  }
}

function cString(block: Buffer, start: number, length: number): string {
  const end = block.indexOf(0, start);
  return nameText(block.subarray(start, end === -1 || end > start + length ? start + length : end));
}

/**
 * A numeric header field: octal (optional leading spaces, digits, then only spaces or NULs, as tar writes it), or
 * base-256 (high bit set) for values of 8 GiB and more. GNU tar also skips one leading NUL and accepts other
 * oddities; those are refused, since reading a size differently from tar would misalign every later header.
 */
function numeric(block: Buffer, start: number, length: number, field: string): number {
  const first = block[start]!;
  if (first === 0x80) {
    let value = 0;
    for (let i = start + 1; i < start + length; i++) value = value * 256 + block[i]!;
    if (!Number.isSafeInteger(value)) throw new TarFormatError(`the ${field} field is out of range`);
    return value;
  }
  const text = block.toString('latin1', start, start + length);
  const m = /^ *([0-7]+)[ \0]*$/.exec(text);
  if (!m) throw new TarFormatError(`the ${field} field is not an octal number`);
  return parseInt(m[1]!, 8);
}

function checksumOk(block: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
  try {
    return sum === numeric(block, 148, 8, 'checksum');
  } catch {
    return false;
  }
}

/** pax records `<length> <key>=<value>\n`; a record tar would read otherwise (or that renames a sparse file) is refused. */
function parsePax(data: Buffer): Overrides {
  const result: Overrides = {};
  let offset = 0;
  while (offset < data.length) {
    const space = data.indexOf(0x20, offset);
    const lengthText = space === -1 ? '' : data.toString('latin1', offset, space);
    const length = /^[1-9][0-9]*$/.test(lengthText) ? Number(lengthText) : 0;
    const end = offset + length;
    if (!length || end > data.length || data[end - 1] !== 0x0a) {
      throw new TarFormatError('malformed pax extended header');
    }
    const eq = data.indexOf(0x3d, space + 1);
    if (eq === -1 || eq <= space + 1 || eq >= end) throw new TarFormatError('malformed pax extended header');
    const key = data.toString('latin1', space + 1, eq);
    // Only the names are text; other values (xattrs, ...) may be any bytes and are not read.
    const raw = data.subarray(eq + 1, end - 1);
    if (key === 'path') result.path = nameText(raw);
    else if (key === 'linkpath') result.linkpath = nameText(raw);
    else if (key === 'size') {
      const value = raw.toString('latin1');
      if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(Number(value))) {
        throw new TarFormatError(`pax size '${value}' is not a size`);
      }
      result.size = Number(value);
    } else if (key.startsWith('GNU.sparse.') || key.startsWith('GNU.volume.')) {
      throw new TarFormatError(`pax record ${key} (sparse or multi-volume archives are not read)`);
    }
    offset = end;
  }
  return result;
}

type Flag = MemberType | 'pax' | 'global' | 'longname' | 'longlink';

function flagKind(flag: string): Flag {
  switch (flag) {
    case '0':
    case '\0':
    case '7':
      return 'file';
    case '1':
      return 'hardlink';
    case '2':
      return 'symlink';
    case '3':
    case '4':
      return 'device';
    case '5':
      return 'dir';
    case '6':
      return 'fifo';
    case 'x':
      return 'pax';
    case 'g':
      return 'global';
    case 'L':
      return 'longname';
    case 'K':
      return 'longlink';
    default:
      // GNU sparse (S), dump dir (D), multi-volume (M), volume label (V), old long names (N), and types tar
      // would extract as plain files although this watcher cannot know their layout.
      throw new TarFormatError(`unsupported tar member type '${flag.replace(/[^\x20-\x7e]/g, '?')}'`);
  }
}

export class TarMemberWatcher {
  readonly members: TarMember[] = [];
  private header = Buffer.alloc(0);
  /** Bytes of the current member's data still to come, then its padding to the block size. */
  private remaining = 0;
  private padding = 0;
  private hash: Hash | undefined;
  private current: TarMember | undefined;
  /** Content of a metadata member (pax or GNU long name) being collected. */
  private meta: { kind: Flag; chunks: Buffer[] } | undefined;
  /** What metadata members said about the next real member; each kind at most once. */
  private pax: Overrides | undefined;
  private longName: string | undefined;
  private longLink: string | undefined;
  /** Set once the end-of-archive block went by: the stream held a whole archive. */
  ended = false;
  /** Why the stream must not go on: not readable as tar, or a member `check` refused. */
  failure: Error | undefined;

  constructor(
    private readonly hashFiles: boolean,
    /** Called with each member before tar sees its header; throws to stop the stream there. */
    private readonly check: (member: TarMember) => void = () => undefined,
  ) {}

  /** Reads the next bytes of the stream; throws (and keeps the reason as `failure`) where tar must not get them. */
  inspect(chunk: Buffer): void {
    try {
      this.consume(chunk);
    } catch (error) {
      this.failure = error as Error;
      throw error;
    }
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
      // The first of the two zero blocks that end an archive; tar stops reading members here.
      if (this.pax || this.longName !== undefined || this.longLink !== undefined) {
        throw new TarFormatError('the archive ends after an extended header');
      }
      this.ended = true;
      return;
    }
    if (!checksumOk(block)) throw new TarFormatError('not a tar stream (header checksum mismatch)');
    const kind = flagKind(String.fromCharCode(block[156]!));
    const headerSize = numeric(block, 124, 12, 'size');
    if (kind === 'pax' || kind === 'global' || kind === 'longname' || kind === 'longlink') {
      if (headerSize > MAX_META_BYTES) throw new TarFormatError(`a ${kind} header of ${headerSize} bytes`);
      this.meta = { kind, chunks: [] };
      this.start(headerSize);
      return;
    }
    const size = this.pax?.size ?? headerSize;
    // tar skips data only where it expects some; a size on anything else would be read differently by tar.
    if (kind !== 'file' && size !== 0)
      throw new TarFormatError(`a ${kind} member with ${size} bytes of data`);
    // Only `ustar\0` headers have a prefix field (GNU's `ustar  ` keeps other fields there), as tar reads them.
    const ustar = block.toString('latin1', 257, 263) === 'ustar\0';
    const prefix = ustar ? cString(block, 345, 155) : '';
    const base = cString(block, 0, 100);
    // pax path wins over a GNU long name whatever their order, as in GNU tar.
    const name = this.pax?.path ?? this.longName ?? (prefix ? `${prefix}/${base}` : base);
    const linked = kind === 'symlink' || kind === 'hardlink';
    const link = linked ? (this.pax?.linkpath ?? this.longLink ?? cString(block, 157, 100)) : '';
    if (name.includes('\0') || link.includes('\0'))
      throw new TarFormatError('a member name holds a NUL byte');
    // A regular file named `x/` is extracted as a directory by GNU tar, which then reads no data.
    if (kind === 'file' && name.endsWith('/'))
      throw new TarFormatError(`a file member named like a directory`);
    const member: TarMember = { name, type: kind, size };
    if (linked) member.link = link;
    this.pax = undefined;
    this.longName = undefined;
    this.longLink = undefined;
    this.check(member);
    this.current = member;
    this.members.push(member);
    this.hash = kind === 'file' && this.hashFiles ? createHash('sha256') : undefined;
    this.start(kind === 'file' ? size : 0);
  }

  private start(dataSize: number): void {
    this.remaining = dataSize;
    this.padding = (BLOCK - (dataSize % BLOCK)) % BLOCK;
    if (dataSize === 0) this.finishData();
  }

  private finishData(): void {
    if (this.meta) {
      const data = Buffer.concat(this.meta.chunks);
      const { kind } = this.meta;
      this.meta = undefined;
      if (kind === 'global') {
        // Global records apply to every later member in GNU tar; none that move or resize one is accepted.
        const global = parsePax(data);
        if (Object.keys(global).length > 0)
          throw new TarFormatError('a global pax header sets a path or size');
        return;
      }
      const repeated =
        (kind === 'pax' && this.pax) ||
        (kind === 'longname' && this.longName !== undefined) ||
        (kind === 'longlink' && this.longLink !== undefined);
      if (repeated) throw new TarFormatError(`two ${kind} headers for one member`);
      if (kind === 'pax') this.pax = parsePax(data);
      else if (kind === 'longname') this.longName = cString(data, 0, data.length);
      else this.longLink = cString(data, 0, data.length);
      return;
    }
    if (this.current && this.hash) this.current.sha256 = this.hash.digest('hex');
    this.hash = undefined;
    this.current = undefined;
  }
}
