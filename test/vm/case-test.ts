// The VM suite's `test`: node:test's, counting the tests that really run (a skipped test's body never
// does). all.ts fails a case whose VM_CASE is unknown, or that ran fewer tests than CASE_TESTS says:
// a renamed case, or a missing VM_CASE, would otherwise skip almost everything and pass.
import { test as nodeTest, type TestContext, type TestOptions } from 'node:test';

type Body = (t: TestContext) => void | Promise<void>;

let ran = 0;

export function test(name: string, options: TestOptions | Body, body?: Body): Promise<void> {
  const fn = typeof options === 'function' ? options : body!;
  const opts = typeof options === 'function' ? {} : options;
  return nodeTest(name, opts, (t) => {
    ran++;
    return fn(t);
  });
}

/** how many tests have run so far */
export const testsRun = (): number => ran;

/**
 * The tests each case of testbed/matrix.sh must run (a unit test keeps the names equal to matrix.sh's
 * list). Raise a number when a case gains tests; never lower one to make a run pass.
 */
export const CASE_TESTS: Readonly<Record<string, number>> = {
  'iommufd-6.12-mtty': 16,
  'iommufd-6.12-virtio': 18,
  'iommufd-6.12-intel': 62,
  'stock-6.1-intel': 27,
  'iommufd-6.12-hidden-iommu': 11,
  'stock-6.12-intel': 27,
  'iommufd-6.12-noiommu': 9,
  'iommufd-6.12-virtio-strict': 5,
  'stock-6.1-smmuv3': 18,
  'stock-6.12-smmuv3': 18,
  'iommufd-6.12-smmuv3': 20,
  'iommufd-6.12-64k-smmuv3': 20,
};
