// A job using the directory cache, for kill sweeps: restores disk A read-only (registering as its reader), then
// saves disk B under a new key, which evicts the least recently restored entry over the budget. Imports the tsc
// output (lib/), so it runs the code the bundle would. Usage: node cache-dir-job.mjs <restore-dir> <save-dir>
import { join } from 'node:path';
import { restoreCache, saveCache } from '../../lib/core/cache.js';
import { CliHost } from '../../lib/core/host.js';
import { MapInputSource } from '../../lib/core/inputs.js';

const [restoreDir, saveDir] = process.argv.slice(2);
const host = new CliHost({ inputs: new MapInputSource({}), log: () => undefined, out: () => undefined });
const files = (dir) => [join(dir, 'disk.qcow2.zst'), join(dir, 'disk.json')];
await restoreCache(host, files(restoreDir), 'sweep-a', [], { readOnly: true });
await saveCache(host, files(saveDir), 'sweep-b');
