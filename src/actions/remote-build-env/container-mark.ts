/**
 * How post finds the containers the job made through its service in the shared store once they have exited (a
 * crashed `podman run --name db`) or were only created: conmon, which carries the service's mark while a container
 * runs (job-containers.ts), is gone by then. So the service gives every container it creates an annotation holding
 * a random token of this job's, through a containers.conf layer of its own: no client of the service can leave it
 * out, and a client of another podman cannot guess it (it is in the job's state and in a file only this user
 * reads), so a neighbour cannot have post remove a container the job did not make. Its only way is to copy the
 * token off one of the job's containers onto one of its own: post then removes that container, its own doing.
 *
 * How a layer reaches the service depends on podman's version:
 * - 4.8 on: `--module <file>`, read after every other containers.conf but CONTAINERS_CONF_OVERRIDE; `{append=true}`
 *   (also 4.8) keeps the annotations those set.
 * - before: one file, which replaces what its variable names: CONTAINERS_CONF (podman 4.3 has nothing else) replaces
 *   every containers.conf podman reads, CONTAINERS_CONF_OVERRIDE (4.4 on) the override the user gave. Where the
 *   service would read such a file anyway (the `containers-conf` input, or the variable set in the job's env) it gets
 *   a copy with the annotation added; where CONTAINERS_CONF would replace the system's files, there is no mark (a
 *   copy of several layered files would not say the same), and post finds only running containers.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  CONTAINERS_CONF,
  containersConfVariable,
  type ContainersConfVariable,
  type PodmanVersion,
} from '../../core/podman.js';

export const MARK_ANNOTATION = 'io.github.image-ci.remote-build-env';

/** What the service needs for the mark: a module to load, or the containers.conf to read in place of `conf`. */
export type MarkLayer =
  | { module: string }
  | { containersConf: { path: string; variable: ContainersConfVariable } }
  | { none: string };

/** The header line of the containers table; a byte-order mark may come first on the first line. */
const CONTAINERS_TABLE = /^\uFEFF?[ \t]*\[[ \t]*containers[ \t]*\][ \t]*(#.*)?$/m;
/**
 * Left as it is, with no mark, rather than a service that fails to start or reads something else: a file that
 * sets annotations already (a second key is refused, or replaces the first), one that defines the containers table
 * otherwise than by a plain header (dotted keys, an inline table, a quoted name: a `[containers]` header added
 * after them is refused), in quoted key forms too, and one with a multi-line string, where a line that looks like
 * the header may be inside the string (the annotation would land in that string and the table would get none).
 */
const CANNOT_ADD =
  /^\uFEFF?[ \t]*(?:(["']?)(?:annotations|containers)\1[ \t]*[=.]|\[[ \t]*(["'])containers\2[ \t]*\])|"""|'''/m;

/** Why a file CANNOT_ADD matches gets no mark. */
export const UNMARKABLE =
  'sets annotations, names the containers table otherwise than by a plain header, or has a multi-line string';

function annotationLine(token: string, append: boolean): string {
  return `annotations = ["${MARK_ANNOTATION}=${token}"${append ? ', {append=true}' : ''}]\n`;
}

/** `text` (a containers.conf) with the annotation added to its `[containers]` table, or undefined when it cannot be. */
export function withMark(text: string, token: string): string | undefined {
  if (CANNOT_ADD.test(text)) return undefined;
  const table = CONTAINERS_TABLE.exec(text);
  if (!table)
    return `${text}${text.endsWith('\n') || text === '' ? '' : '\n'}\n[containers]\n${annotationLine(token, false)}`;
  const end = table.index + table[0].length;
  return `${text.slice(0, end)}\n${annotationLine(token, false)}${text.slice(end).replace(/^\r?\n/, '')}`;
}

const hasModules = (v: PodmanVersion) => v.major > 4 || (v.major === 4 && v.minor >= 8);

/**
 * Writes the layer into `dir` (mode 0600: the token must stay unguessable) for the service of podman `version`;
 * `conf` is the file the `containers-conf` input gives the service, if any.
 */
export async function writeMarkLayer(
  version: PodmanVersion,
  dir: string,
  token: string,
  conf: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): Promise<MarkLayer> {
  const path = join(dir, 'mark.conf');
  if (hasModules(version)) {
    await writeFile(path, `[containers]\n${annotationLine(token, true)}`, { mode: 0o600 });
    return { module: path };
  }
  const variable = containersConfVariable(version);
  const source = conf ?? env[variable];
  if (!source) {
    if (variable === CONTAINERS_CONF) {
      return {
        none: `podman ${version.text} has no containers.conf layer but CONTAINERS_CONF, which would replace the system's`,
      };
    }
    await writeFile(path, `[containers]\n${annotationLine(token, false)}`, { mode: 0o600 });
    return { containersConf: { path, variable } };
  }
  const marked = withMark(await readFile(source, 'utf8'), token);
  if (marked === undefined) return { none: `${source} ${UNMARKABLE}` };
  await writeFile(path, marked, { mode: 0o600 });
  return { containersConf: { path, variable } };
}
