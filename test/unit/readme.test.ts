// The README's fallback table is the policy's FALLBACK_TABLE, row for row.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { FALLBACK_TABLE } from '../../src/routes/select.js';

test('README fallback table equals FALLBACK_TABLE', () => {
  const readme = fs.readFileSync(path.resolve(import.meta.dirname, '../../../README.md'), 'utf8');
  const block = /<!-- fallback-table -->\n([\s\S]*?)<!-- \/fallback-table -->/.exec(readme);
  assert.ok(block, 'README.md has the fallback-table markers');
  const rows = block[1]!.trim().split('\n').slice(2).map((line) => line.split('|').slice(1, -1).map((c) => c.trim()));
  assert.deepEqual(rows, FALLBACK_TABLE.map((r) => [r.step, r.errno ?? '(none)', r.action]));
});
