// The layers, read from the source: every import runs down (uapi < sys < ioctl and discovery < dma <
// routes < device < host < cli), only the call layer (src/ioctl) builds structs and issues ioctls, and
// no source or test file grows past ~400 lines unless its header says why.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '../../..');
const SRC = path.join(ROOT, 'src');

function files(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? files(p) : e.name.endsWith('.ts') ? [p] : [];
  });
}

/** The layer of a source file: its folder under src/, or the file itself for the few at the top. */
const LAYER: Record<string, number> = {
  'uapi': 0, 'errors.ts': 0, 'log.ts': 0, 'package.ts': 0,
  'sys': 1,
  'ioctl': 2, 'discovery': 2,
  'dma': 3,
  'routes': 4,
  'device': 5,
  'host': 6,
  'cli': 7, 'index.ts': 7,
};
const layerOf = (file: string): [string, number] => {
  const top = path.relative(SRC, file).split(path.sep)[0]!;
  const layer = LAYER[top];
  assert.ok(layer !== undefined, `src/${top} has no layer in this test: add it`);
  return [top, layer];
};

/** Value imports (type-only imports carry no code, and may name a type from anywhere). */
function valueImports(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  return [...text.matchAll(/^import\s+(?!type\s)[^;]*?from\s+'(\.[^']+)';/gms)].map((m) => path.resolve(path.dirname(file), m[1]!.replace(/\.js$/, '.ts')));
}

test('every import of src/ runs down the layers, never up', () => {
  const upward: string[] = [];
  for (const file of files(SRC)) {
    const [from, mine] = layerOf(file);
    for (const target of valueImports(file)) {
      const [to, theirs] = layerOf(target);
      if (theirs > mine) upward.push(`${path.relative(ROOT, file)} (${from}) imports ${path.relative(ROOT, target)} (${to})`);
    }
  }
  assert.deepEqual(upward, []);
});

test('only the call layer (src/ioctl) builds kernel structs and issues ioctls', () => {
  const offenders: string[] = [];
  for (const file of files(SRC)) {
    const rel = path.relative(SRC, file);
    if (/^(ioctl|uapi|sys)\//.test(rel)) continue;
    const text = fs.readFileSync(file, 'utf8');
    if (/from '[./]+uapi\/struct\.js'/.test(text)) offenders.push(`${rel}: imports uapi/struct`);
    if (/\.ioctl\(/.test(text)) offenders.push(`${rel}: issues an ioctl`);
  }
  assert.deepEqual(offenders, []);
});

test('no file in src/ or test/ is over ~400 lines, unless its header says why', () => {
  const long = [...files(SRC), ...files(path.join(ROOT, 'test'))]
    .map((f) => ({ f: path.relative(ROOT, f), text: fs.readFileSync(f, 'utf8') }))
    .filter(({ text }) => text.split('\n').length > 420 && !/^\/\/.*\b(a table|a list)\b.*\breads better whole\b/m.test(text.split('\n').slice(0, 12).join('\n')))
    .map(({ f, text }) => `${f}: ${text.split('\n').length} lines`);
  assert.deepEqual(long, []);
});

test('the VM suite knows every case of testbed/matrix.sh, and no other', async () => {
  const { CASE_TESTS } = await import('../vm/case-test.js');
  const matrix = fs.readFileSync(path.join(ROOT, 'testbed/matrix.sh'), 'utf8');
  const defined = [...matrix.matchAll(/^case_([\w.-]+)\(\)/gm)].map((m) => m[1]!).sort();
  const all = /^ALL=\(([^)]*)\)/m.exec(matrix)![1]!.split(/\s+/).filter(Boolean).sort();
  assert.deepEqual(all, defined, 'matrix.sh runs every case it defines');
  assert.deepEqual(Object.keys(CASE_TESTS).sort(), defined);
  for (const [c, n] of Object.entries(CASE_TESTS)) assert.ok(n > 0, `${c} must run some tests`);
});
