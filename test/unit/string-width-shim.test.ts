// scripts/lazy-string-width.cjs stands in for string-width in the CLI bundle, answering printable ASCII
// itself so that a command never loads the real one. Its answers must be the real one's, for every kind
// of text help can contain.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';
import realWidth from 'string-width';

const ROOT = path.resolve(import.meta.dirname, '../../..');
const shim = createRequire(import.meta.url)(path.join(ROOT, 'scripts/lazy-string-width.cjs')) as (text: unknown, options?: object) => number;

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
