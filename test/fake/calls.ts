// Every call the fake answers goes through run(): the call log, the listeners (tests change the host
// mid-way from them) and the injected failures (failNext, failOpen).
import { sysError, type FakeSysError } from './errno.js';
import type { FakeState, FdEntry } from './state.js';
import type { CallInfo, FailRule } from './types.js';

export function run<T>(s: FakeState, call: CallInfo, fn: () => T, logged = true): T {
  if (logged) s.calls.push(call);
  for (const l of s.listeners) l(call);
  let rule = s.rules.find((r) => r.left > 0 && matches(r, call));
  if (rule && rule.pass > 0) {
    rule.pass--;
    rule = undefined;
  }
  try {
    if (rule) {
      // spent rules go: a long test injects thousands, and every call would scan them all
      if (--rule.left === 0) s.rules.splice(s.rules.indexOf(rule), 1);
      call.injected = true;
      // an injected open failure carries the path, as Node's does; the addon's ioctl errors carry none
      const syscall = call.call === 'readText' || call.call === 'readBytes' ? 'open' : call.call === 'allocDma' ? 'mmap' : call.call;
      throw sysError(rule.errno, syscall, call.call === 'ioctl' || call.fd !== undefined ? undefined : call.path);
    }
    return fn();
  } catch (e) {
    if (e instanceof Error && typeof (e as FakeSysError).code === 'string') call.errno = (e as FakeSysError).code;
    throw e;
  }
}

/** A call made on an fd (its entry in the fd table, if open): its path is the fd's. */
export function fdCall(call: CallInfo['call'], fd: number, e: FdEntry | undefined): CallInfo {
  const info: CallInfo = { call, fd };
  if (e) info.path = e.path;
  return info;
}

/** The next `times` matching calls fail with errno (an ioctl by default). */
export function failNext(s: FakeState, rule: FailRule): void {
  const call = rule.call ?? (rule.request !== undefined ? 'ioctl' : undefined);
  s.rules.push({ ...rule, ...(call ? { call } : {}), left: rule.times ?? 1, pass: rule.after ?? 0 });
}

function matches(r: FailRule, c: CallInfo): boolean {
  if (r.call !== undefined && r.call !== c.call) return false;
  if (r.request !== undefined && r.request !== c.request) return false;
  if (r.path !== undefined && r.path !== c.path) return false;
  return true;
}
