// Validates every action.yml, workflow and example against the Actions schemas (@action-validator/core).
// Its schema predates `using: node24`; that one value is checked here and swapped for node20 before validating.
import { createRequire } from 'node:module';
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';

const require = createRequire(import.meta.url);
const { validateAction, validateWorkflow } = require('@action-validator/core');

const files = [];
const walk = (dir, pick) => {
  if (!existsSync(dir)) return;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, pick);
    else if (pick(e.name)) files.push(p);
  }
};
files.push('action.yml');
walk('actions', (n) => n === 'action.yml');
walk('.github/workflows', (n) => /\.ya?ml$/.test(n));
walk('examples', (n) => /\.ya?ml$/.test(n));

let failed = 0;
for (const file of files) {
  let text = readFileSync(file, 'utf8');
  const isAction = file.endsWith('action.yml');
  if (isAction) {
    if (!/^\s+using: '?node24'?$/m.test(text)) {
      console.error(`${file}: runs.using must be node24`);
      failed++;
      continue;
    }
    text = text.replace(/^(\s+using: )'?node24'?$/m, '$1node20');
  }
  const result = isAction ? validateAction(text) : validateWorkflow(text);
  if (result.errors.length > 0) {
    console.error(`${file}:\n${JSON.stringify(result.errors, null, 2)}`);
    failed++;
  }
}
console.log(`validated ${files.length} action and workflow files, ${failed} invalid`);
process.exit(failed ? 1 : 0);
