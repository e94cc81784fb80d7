// test/scenarios.ts on the real kernel of this case: the same steps, with the same errno at each, as
// the unit tests check against the fake kernel. A difference here is the fake drifting from Linux.
import assert from 'node:assert/strict';
import { runScenario, SCENARIOS } from '../scenarios.js';
import { test } from './case-test.js';
import { CASE, EDU, holdDevice } from './helpers.js';

for (const s of SCENARIOS) {
  test(`scenario (real kernel): ${s.name}`, { skip: s.vmCase !== CASE && `${s.vmCase} only` }, async (t) => {
    // the hidden /dev/iommu is the case's own (it boots with vmt.hide)
    const holder = s.arrange.holdElsewhere ? await holdDevice(EDU, s.arrange.holdElsewhere) : null;
    try {
      const r = await runScenario(s);
      t.diagnostic(`steps: ${JSON.stringify(r.steps)}`);
      assert.deepEqual(r.outcome, s.outcome);
      assert.deepEqual(r.steps, s.steps, 'the steps and errnos test/scenarios.ts says, which the fake takes too');
    } finally {
      await holder?.stop();
    }
  });
}
