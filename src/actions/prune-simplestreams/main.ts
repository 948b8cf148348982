/** main: prune the repository (prune.ts), then outputs, the JSON report, the summary and the verify verdict. */
import { mkdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { writeFileAtomic } from '../../core/atomic.js';
import type { Host } from '../../core/host.js';
import { ActionError } from '../../core/run.js';
import { listProblems } from './catalog.js';
import { Outputs } from './constants.js';
import type { PruneInputs } from './inputs.js';
import { pruneRepository } from './prune.js';
import { summaryMarkdown } from './report.js';

export async function main(host: Host, inputs: PruneInputs): Promise<void> {
  const report = await pruneRepository(inputs, host);
  host.setOutput(Outputs.removedVersions, String(report.totals.removedVersions));
  host.setOutput(Outputs.removedFiles, String(report.totals.removedFiles));
  host.setOutput(Outputs.deferredFiles, String(report.totals.deferredFiles));
  host.setOutput(Outputs.freedBytes, String(report.totals.freedBytes));
  if (inputs.reportFile) {
    const file = resolve(inputs.reportFile);
    await mkdir(dirname(file), { recursive: true });
    await writeFileAtomic(file, `${JSON.stringify(report, null, 2)}\n`);
    host.setOutput(Outputs.reportFile, file);
  }
  await host.appendSummary(summaryMarkdown(report));
  const failures: string[] = [];
  if (report.files.failed.length > 0) {
    failures.push(
      listProblems(
        'the file system refused to remove these (the rest of the prune is done; the next one tries them again)',
        report.files.failed.map((f) => `${f.path}: ${f.error}`),
      ),
    );
  }
  if ('problems' in report.verify && report.verify.problems.length > 0) {
    failures.push(
      listProblems(`verify (${report.verify.mode}) failed after pruning`, report.verify.problems),
    );
  }
  if (failures.length > 0) throw new ActionError(failures.join(''));
}
