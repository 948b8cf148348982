/**
 * Where a cache archive may write. @actions/cache extracts with `tar -P` (its member names are relative to the
 * workspace and climb out of it with `../`), so tar itself writes wherever a member name or a link points: an
 * entry crafted by anyone who can save to the repository's cache could plant a file anywhere the job can write.
 * The streaming restore shows every member to this check before tar sees it, and refuses the whole entry when
 * one member would land outside the paths the caller asked to restore: an absolute or `../` name outside them, a
 * name under a symlink the archive itself made (tar would write through it), a hard link to a file outside them
 * (or reached through such a symlink, or to such a symlink), or anything but a file, directory, symlink or hard
 * link (a device node gives access to a disk, a FIFO blocks whoever reads it).
 *
 * A symlink may point anywhere (a venv's `bin/python -> /usr/bin/python3`, `lib64 -> lib`): tar does not follow
 * a link it made, so only what is later written through it could escape, and that is refused by name.
 */
import { dirname, resolve, sep } from 'node:path';
import type { TarMember } from './tar-members.js';

/**
 * The entry is not restored: a member would be written outside the requested paths, or the archive is not one
 * whose members can be told the way tar will read them.
 */
export class EntryRefused extends Error {
  constructor(problem: string, member?: string) {
    super(
      member === undefined
        ? `unreadable archive: ${problem}`
        : `archive member '${shown(member)}' ${problem}`,
    );
    this.name = 'EntryRefused';
  }
}

/**
 * `text` with each control or format character (ESC, CR, NUL, U+202E...) shown as `?`: names from an entry
 * reach log lines, where escape sequences would act on the terminal or the log viewer.
 */
export function printable(text: string): string {
  return text.replace(/[\p{C}]/gu, '?');
}

/** A printable, one-line form of a hostile name for a log line. */
function shown(name: string): string {
  const flat = printable(name);
  return flat.length > 200 ? `${flat.slice(0, 200)}…` : flat;
}

/**
 * Returns the check for one extraction: `workspace` is tar's -C directory, `paths` the cache paths as given to
 * restore (absolute, or relative to the workspace as @actions/cache takes them).
 */
export function confineMembers(workspace: string, paths: readonly string[]): (member: TarMember) => void {
  const roots = paths.map((p) => resolve(workspace, p));
  const inside = (path: string) => roots.some((root) => path === root || path.startsWith(`${root}${sep}`));
  /** Symlinks the archive made so far. */
  const symlinks = new Set<string>();

  /**
   * Why a name, as tar resolves it relative to -C, is no place to write, or undefined. `../` may only lead it
   * up to the cache paths, never come after a real component (where a symlink could make it go elsewhere).
   */
  const misplaced = (name: string): string | undefined => {
    const parts = name.split('/').filter((p) => p !== '' && p !== '.');
    const firstReal = parts.findIndex((p) => p !== '..');
    if (firstReal !== -1 && parts.slice(firstReal).includes('..'))
      return "climbs with '..' after a directory";
    const path = resolve(workspace, name);
    if (!inside(path)) return 'outside the cache paths';
    for (let d = dirname(path); d !== dirname(d); d = dirname(d)) {
      if (symlinks.has(d)) return `reached through the archive's symlink '${shown(d)}'`;
    }
    return undefined;
  };

  return (member) => {
    const place = misplaced(member.name);
    if (place) throw new EntryRefused(`is ${place}`, member.name);
    const path = resolve(workspace, member.name);
    const link = member.link ?? '';
    switch (member.type) {
      case 'hardlink': {
        const problem = misplaced(link);
        if (problem) throw new EntryRefused(`is a hard link to '${shown(link)}', ${problem}`, member.name);
        // A hard link to a symlink is a second symlink, which this check would not know as one.
        if (symlinks.has(resolve(workspace, link))) {
          throw new EntryRefused(`is a hard link to the archive's symlink '${shown(link)}'`, member.name);
        }
        break;
      }
      case 'symlink':
        symlinks.add(path);
        return;
      case 'dir':
        // tar keeps a symlink to a directory where the archive has a directory: it stays a symlink here too.
        return;
      case 'file':
        break;
      default:
        throw new EntryRefused(`is a ${member.type === 'fifo' ? 'FIFO' : 'device node'}`, member.name);
    }
    // A file or hard link replaces whatever was at its path (tar unlinks it first).
    symlinks.delete(path);
  };
}
