/**
 * Version names as simplestreams clients see them. incus and LXD only list a version whose name starts with a
 * date `YYYYMMDD` (they take the creation date from it) and order versions as plain strings (byte order, the
 * C locale), so "newest" here means the greatest name in that order.
 */

const DATED = /^(\d{4})(\d{2})(\d{2})(?:_?(\d{2}):?(\d{2}))?/;

/** The time a dated version name stands for (UTC), or undefined when clients would not list the version. */
export function versionTimeMs(name: string): number | undefined {
  const m = DATED.exec(name);
  if (!m) return undefined;
  const [year, month, day] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const hour = m[4] === undefined ? 0 : Number(m[4]);
  const minute = m[5] === undefined ? 0 : Number(m[5]);
  // Not Date.UTC: it reads years 0-99 as 1900-1999, where Go's time.Parse (the clients') takes 0050 as is.
  const date = new Date(0);
  date.setUTCFullYear(year, month - 1, day);
  // 20240231 rolls over to March; clients' strict parse rejects it, so do we.
  if (date.getUTCFullYear() !== year || date.getUTCMonth() !== month - 1 || date.getUTCDate() !== day) {
    return undefined;
  }
  if (hour > 23 || minute > 59) return date.getTime();
  return date.getTime() + (hour * 60 + minute) * 60_000;
}

/** True when incus/LXD clients would show this version (its name starts with a valid YYYYMMDD date). */
export function isClientVersion(name: string): boolean {
  return versionTimeMs(name) !== undefined;
}

/** C-locale comparison (versions, product names): UTF-8 byte order, as Go's string `<` in the clients; localeCompare would differ. */
export function compareC(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}
