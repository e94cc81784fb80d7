// Shared by the unit tests: error assertions and the fd-leak check.
import assert from 'node:assert/strict';
import { VfioError } from '../src/errors.js';
import type { FakeKernel } from './fake-kernel.js';

type ErrorClass<E> = abstract new (...args: never[]) => E;

/** Runs fn, asserts it throws an instance of cls, and returns the error for further checks. */
export function catchError<E extends Error>(fn: () => unknown, cls: ErrorClass<E>): E {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  if (thrown === undefined) assert.fail(`expected ${cls.name}, nothing was thrown`);
  if (!(thrown instanceof cls)) {
    const desc = thrown instanceof Error ? `${thrown.name}: ${thrown.message}` : String(thrown);
    assert.fail(`expected ${cls.name}, got ${desc}`);
  }
  return thrown;
}

/** Every fd the library opened is closed, and it never closed one twice. */
export function assertNoLeaks(k: FakeKernel, context = ''): void {
  assert.deepEqual(k.openPaths(), [], `fds left open${context ? ` (${context})` : ''}`);
  assert.equal(k.openFds(), 0);
  assert.deepEqual(k.badCloses, [], `fds closed that were not open${context ? ` (${context})` : ''}`);
}

/** The error is one of the public errors, as the CLI reports them (never a raw system error). */
export function assertVfioError(e: unknown): asserts e is VfioError {
  assert.ok(e instanceof VfioError, `not a VfioError: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
}

/** A seeded PRNG (mulberry32): the property tests are reproducible. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
