// Fixture post: saves what main planned; the second call proves runPlannedSave is idempotent.
import { runPlannedSave } from '../../../lib/core/cache.js';
import { ActionsHost } from '../../../lib/core/host.js';

const host = new ActionsHost();
const first = await runPlannedSave(host);
host.setOutput('save-outcome', first ? first.outcome : 'none');
const second = await runPlannedSave(host);
host.setOutput('second-save', second ? second.outcome : 'no-op');
