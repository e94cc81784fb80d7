// test/scenarios.ts against the fake kernel: the steps and the errno at each, as the real kernel takes
// them (test/vm/scenarios.test.ts checks the same list there).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EDU, FakeKernel } from '../fake-kernel.js';
import { assertNoLeaks } from '../helpers.js';
import { runScenario, SCENARIOS } from '../scenarios.js';

for (const s of SCENARIOS) {
  test(`scenario (fake kernel, as ${s.vmCase}): ${s.name}`, async () => {
    const k = FakeKernel.host({ ...s.fake, devices: [{ address: EDU, group: 3 }] });
    if (s.arrange.hide === 'iommu') k.hide('/dev/iommu');
    if (s.arrange.holdElsewhere === 'legacy') k.holdGroupElsewhere(3);
    if (s.arrange.holdElsewhere === 'iommufd') k.bindElsewhere(EDU);
    const r = await runScenario(s, k);
    assert.deepEqual(r.outcome, s.outcome);
    assert.deepEqual(r.steps, s.steps, 'the fake takes the real kernel\'s steps, with its errnos');
    assertNoLeaks(k);
  });
}
