/**
 * What libraries built on @actions/core write to process.stdout: workflow commands (`::name props::data`, the
 * data escaped) and plain lines. Read back where that output must not reach stdout as it is: the cache wrapper
 * (which learns from it why a library call failed) and the CLI (whose stdout holds only outputs).
 */

export interface LibraryCommand {
  name: string;
  data: string;
}

/** @actions/core escapes command data (%, CR, LF); undone so messages read as the library wrote them. */
function unescapeCommandData(s: string): string {
  return s.replace(/%0D/g, '\r').replace(/%0A/g, '\n').replace(/%25/g, '%');
}

/** The command a line written by @actions/core carries, or undefined for a plain line. */
export function parseLibraryCommand(line: string): LibraryCommand | undefined {
  const m = /^::([a-z-]+)(?: [^:]*)?::(.*)$/.exec(line);
  return m ? { name: m[1]!, data: unescapeCommandData(m[2]!) } : undefined;
}

/**
 * Takes over process.stdout.write until the returned function is called (which also hands over a last line
 * without its newline). Each complete line goes to `onLine`, never to stdout as it is. Whatever `onLine` itself writes to process.stdout (a host logging through @actions/core) goes straight out
 * instead of coming back as another line, and so does any write for which `captures` says no.
 */
export function interceptStdout(
  onLine: (line: string) => void,
  options: { captures?: () => boolean } = {},
): () => void {
  const original = process.stdout.write;
  let handling = false;
  let released = false;
  let pending = '';
  const handle = (line: string) => {
    handling = true;
    try {
      onLine(line.replace(/\r$/, ''));
    } finally {
      handling = false;
    }
  };
  const patched = function (chunk: unknown, ...rest: unknown[]): boolean {
    if (handling || released || (options.captures && !options.captures()))
      return (original as (...a: unknown[]) => boolean).call(process.stdout, chunk, ...rest);
    pending += typeof chunk === 'string' ? chunk : Buffer.from(chunk as Uint8Array).toString('utf8');
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) handle(line);
    const callback = rest.find((r): r is () => void => typeof r === 'function');
    if (callback) callback();
    return true;
  } as typeof process.stdout.write;
  process.stdout.write = patched;
  return () => {
    if (released) return;
    released = true;
    if (pending) handle(pending);
    pending = '';
    // A later interception may sit on top by now (a call abandoned at its deadline releases late): then this
    // one stays in the chain, passing everything through.
    if (process.stdout.write === patched) process.stdout.write = original;
  };
}
