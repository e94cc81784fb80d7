// dev_t encoding (src/sys/kernel.ts): major/minor/makedev in plain arithmetic must agree with glibc's
// bit layout, written here once more in BigInt as the reference, for every value a Stats rdev holds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { major, makedev, minor } from '../../src/sys/kernel.js';

// glibc's gnu_dev_makedev, gnu_dev_major and gnu_dev_minor, masks and all
const refMakedev = (maj: bigint, min: bigint): bigint => ((maj & 0xfffn) << 8n) | ((maj & 0xfffff000n) << 32n) | (min & 0xffn) | ((min & 0xffffff00n) << 12n);
const refMajor = (dev: bigint): bigint => ((dev >> 32n) & 0xfffff000n) | ((dev >> 8n) & 0xfffn);
const refMinor = (dev: bigint): bigint => ((dev >> 12n) & 0xffffff00n) | (dev & 0xffn);

test('makedev, major and minor agree with glibc\'s layout', () => {
  // Linux's own range (12-bit major, 20-bit minor) and glibc's wider one, up to what a double holds exactly
  const pairs: [number, number][] = [[0, 0], [1, 3], [10, 196], [246, 0], [511, 1048575], [4095, 255], [4095, 256], [4096, 0], [0xfffff, 0xffffffff], [1, 0x100000]];
  let seed = 7;
  const rand = (limit: number): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return Math.floor((seed / 2 ** 31) * limit);
  };
  for (let i = 0; i < 2000; i++) pairs.push([rand(2 ** 12), rand(2 ** 20)], [rand(2 ** 21), rand(2 ** 32)]);
  for (const [maj, min] of pairs) {
    const dev = refMakedev(BigInt(maj), BigInt(min));
    assert.ok(dev <= BigInt(Number.MAX_SAFE_INTEGER), `test pair ${maj}:${min} fits a double`);
    assert.equal(makedev(maj, min), Number(dev), `makedev(${maj}, ${min})`);
    assert.equal(major(Number(dev)), Number(refMajor(dev)), `major of ${maj}:${min}`);
    assert.equal(minor(Number(dev)), Number(refMinor(dev)), `minor of ${maj}:${min}`);
    assert.deepEqual([major(makedev(maj, min)), minor(makedev(maj, min))], [maj, min]);
  }
});
