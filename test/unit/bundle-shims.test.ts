// The shims scripts/bundle.mjs puts in the CLI bundle so that a command loads less: each must answer
// exactly what the module it stands in for answers. lazy-string-width.cjs answers printable ASCII itself
// (for every kind of text help can contain); lazy-assert.cjs checks yargs' two assertions itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';
import realAssert from 'node:assert';
import realWidth from 'string-width';

const ROOT = path.resolve(import.meta.dirname, '../../..');
const load = createRequire(import.meta.url);
const shim = load(path.join(ROOT, 'scripts/lazy-string-width.cjs')) as (text: unknown, options?: object) => number;
type Check = (actual: unknown, expected: unknown, message?: string) => void;
const lazyAssert = load(path.join(ROOT, 'scripts/lazy-assert.cjs')) as { strictEqual: Check; notStrictEqual: Check };

test('the string-width shim answers what string-width answers', () => {
  const samples: unknown[] = [
    '', ' ', 'vfio-bind bind <device>', '--route  auto|iommufd|legacy', '~!@#$%^&*()_+{}|:"<>?`-=[]\\;\',./',
    'tab\there', 'new\nline', '\u001b[1mbold\u001b[22m', '\u009b31mred', 'caf\u00e9', 'e\u0301', '\u4e2d\u6587',
    '\uff21', '\ud83d\ude00', '\ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67', '1\u20e3', '\u200b', '\u00a0', '\u007f', 'x'.repeat(300),
    undefined, 42,
  ];
  for (const s of samples) {
    assert.equal(shim(s), realWidth(s as string), `width of ${JSON.stringify(s)}`);
    assert.equal(shim(s, { ambiguousIsNarrow: false }), realWidth(s as string, { ambiguousIsNarrow: false }), `width of ${JSON.stringify(s)}, ambiguous wide`);
  }
});

test('the assert shim passes and throws where node:assert does', () => {
  const outcome = (f: () => void): string => {
    try {
      f();
      return 'passes';
    } catch (e) {
      return `${(e as Error).constructor.name}: ${(e as Error).message}`;
    }
  };
  const values: unknown[] = [0, -0, NaN, '0', undefined, null, 'a', {}];
  for (const a of values) {
    for (const b of values) {
      for (const name of ['strictEqual', 'notStrictEqual'] as const) {
        assert.equal(outcome(() => lazyAssert[name](a, b, 'why')), outcome(() => realAssert[name](a, b, 'why')), `${name}(${String(a)}, ${String(b)})`);
      }
    }
  }
});
