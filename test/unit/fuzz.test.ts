// A bounded-time fuzz of the device spec and of what `bind` hands the library (the spec, --route, the
// --*-fd numbers as yargs parses them, ownFds), on the fake. Mutations of valid specs: bit flips,
// special characters, truncation, unicode, long repeats, splices.
//   VFIO_BIND_FUZZ_SECONDS=30  fuzz longer (default 3 seconds per target)
//   VFIO_BIND_FUZZ_SEED=1234   replay a run (the seed is printed at the start and in every failure)
// Invariants: parseDeviceSpec returns a valid normalized spec or throws UsageError, nothing else;
// openDevice throws nothing but a VfioError and leaves no fd, mapping, binding or group hold behind.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { openDevice } from '../../src/index.js';
import { parseDeviceSpec, type DeviceSpec } from '../../src/discovery/spec.js';
import { UsageError, VfioError } from '../../src/errors.js';
import { ROUTE_POLICIES, type RoutePolicy } from '../../src/routes/select.js';
import type { PassedFds } from '../../src/routes/passed-fds.js';
import { EDU, FakeKernel, TESTDEV } from '../fake-kernel.js';
import { prng } from '../helpers.js';

const SECONDS = Number(process.env.VFIO_BIND_FUZZ_SECONDS ?? 3);
const SEED = process.env.VFIO_BIND_FUZZ_SEED !== undefined ? Number(process.env.VFIO_BIND_FUZZ_SEED) >>> 0 : (Date.now() ^ (process.pid << 16)) >>> 0;
console.log(`fuzz: seed ${SEED} (replay with VFIO_BIND_FUZZ_SEED=${SEED}), ${SECONDS} s per target`);

const NIC = '0000:00:12.0';
const MDEV = '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001';

const SEEDS = [
  EDU, '00:10.0', '0000:00:10.0', '0000:00:10.0'.toUpperCase(), TESTDEV, '00:11.0', NIC, '0000:00:14.0', '00:16.0', '0000:00:1f.0', '00:1e.0',
  `/sys/bus/pci/devices/${EDU}`, `/sys/devices/pci0000:00/${EDU}`, `/sys/bus/pci/devices/${EDU}/`, '/sys/class/vfio-dev/vfio0/device',
  '/dev/vfio/devices/vfio0', '/dev/vfio/devices/vfio1', MDEV, MDEV.toUpperCase(), `/sys/bus/mdev/devices/${MDEV}`,
];

const SPECIAL = [
  '\0', '\n', '\r', '\t', '\x1b', '\x7f', '\u0085', '\u009b', '/', '//', '..', '.', '/../', '/./', ':', '::', '-', ' ', '%', '*', '?', '\\',
  'é', '\u00a0', '\u200b', '\u202e', '\ufeff', '\ud800', '\udfff', '😀', 'Ｆ', '\u212a', '\u017f', '٠', '０', 'ı', '0', 'f', 'F', '7', '8', 'g',
  '/dev/vfio/', '/sys/', 'vfio', '0000:', '.0', 'x',
];

type Rand = () => number;
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
const int = (r: Rand, n: number): number => Math.floor(r() * n);

function mutateOnce(r: Rand, s: string): string {
  const at = int(r, s.length + 1);
  switch (int(r, 9)) {
    case 0: { // flip a bit of one UTF-16 code unit
      if (s.length === 0) return s;
      const i = int(r, s.length);
      return s.slice(0, i) + String.fromCharCode(s.charCodeAt(i) ^ (1 << int(r, r() < 0.8 ? 7 : 16))) + s.slice(i + 1);
    }
    case 1: return s.slice(0, at) + pick(r, SPECIAL) + s.slice(at); // insert a special character or piece
    case 2: return s.slice(0, at); // truncate
    case 3: return s.slice(0, at) + s.slice(at + 1 + int(r, 4)); // delete
    case 4: { // a long repeat of a slice
      const piece = s.slice(at, at + 1 + int(r, 6)) || 'a';
      return s.slice(0, at) + piece.repeat(2 + int(r, r() < 0.2 ? 400 : 40)) + s.slice(at);
    }
    case 5: return s.slice(0, at) + String.fromCodePoint(int(r, 0x110000) & ~0x800 /* not a surrogate */) + s.slice(at); // any code point
    case 6: return r() < 0.5 ? s.toUpperCase() : s.toLowerCase();
    case 7: return s.replace(/[0-9a-f]/i, () => '0123456789abcdef'[int(r, 16)]!); // another address
    default: { // splice with another seed
      const other = pick(r, SEEDS);
      return s.slice(0, at) + other.slice(int(r, other.length));
    }
  }
}

function mutate(r: Rand): string {
  let s = pick(r, SEEDS);
  for (let n = int(r, 5); n > 0; n--) s = mutateOnce(r, s);
  return s;
}

const describeInput = (x: unknown): string => JSON.stringify(x, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v));

/** A valid normalized spec, consistent with its input. */
function checkSpec(input: string, spec: DeviceSpec): void {
  switch (spec.kind) {
    case 'pci': {
      assert.match(spec.address, /^[0-9a-f]{4,8}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$/);
      assert.ok(input.toLowerCase().endsWith(spec.address.slice(input.length === 7 ? 5 : 0)), 'the address is the input\'s');
      assert.deepEqual(parseDeviceSpec(spec.address), spec, 'normalizing twice changes nothing');
      break;
    }
    case 'mdev':
      assert.match(spec.uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      assert.equal(spec.uuid, input.toLowerCase());
      break;
    case 'cdev':
      assert.match(spec.name, /^vfio[0-9]{1,6}$/);
      assert.equal(input, `/dev/vfio/devices/${spec.name}`);
      break;
    case 'sysfs':
      assert.ok(spec.path.startsWith('/sys'), spec.path);
      assert.ok(input.startsWith(spec.path));
      assert.ok(!spec.path.split('/').some((p) => p === '.' || p === '..'), 'no . or .. component');
      assert.doesNotMatch(spec.path, /[\u0000-\u001f\u007f-\u009f]/);
      assert.ok(!spec.path.endsWith('/'));
      assert.ok(spec.path.length <= 256);
      if (spec.path.length > 5) assert.deepEqual(parseDeviceSpec(spec.path), spec, 'normalizing twice changes nothing');
      break;
    default:
      assert.fail(`an unknown kind: ${describeInput(spec)}`);
  }
}

/** The fuzzed host: every kind of device the library tells apart, and planted links. */
function fuzzHost(): FakeKernel {
  return FakeKernel.host({
    devices: [
      { address: EDU, group: 3, cdev: 0 },
      { address: TESTDEV, group: 4, cdev: 1 },
      { address: NIC, id: '8086:10d3', driver: 'e1000e', group: 7 },
      { address: '0000:00:14.0', group: 5 },
      { address: '0000:00:15.0', id: '8086:10d3', driver: 'e1000e', group: 5 },
      { address: '0000:00:16.0', group: null, cdev: null },
    ],
    mdevs: [{ uuid: MDEV, group: 9 }],
  })
    .symlink('/sys/bus/pci/devices/0000:00:1f.0', '../../../kernel/iommu_groups/3')
    .symlink('/sys/bus/pci/devices/0000:00:1e.0', '0000:00:1e.0');
}

/** Runs `body` with fresh randomness until the time is up; returns the iteration count. */
function forSeconds(seed: number, body: (r: Rand, i: number) => void): number {
  const r = prng(seed);
  const end = Date.now() + SECONDS * 1000;
  let i = 0;
  for (; Date.now() < end || i < 100; i++) body(r, i);
  return i;
}

describe(`fuzz (seed ${SEED})`, () => {
  test('parseDeviceSpec: a valid normalized spec, or UsageError and nothing else', (t) => {
    const kinds: Record<string, number> = { usage: 0 };
    const n = forSeconds(SEED, (r) => {
      const input: unknown = r() < 0.01 ? pick(r, [undefined, null, 42, {}, ['00:10.0'], Symbol.iterator.toString()]) : mutate(r);
      let spec: DeviceSpec;
      try {
        spec = parseDeviceSpec(input as string);
      } catch (e) {
        if (!(e instanceof UsageError)) assert.fail(`seed ${SEED}: parseDeviceSpec(${describeInput(input)}) threw ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
        assert.doesNotMatch(e.message, /[\u0000-\u001f\u007f-\u009f]/, `seed ${SEED}: raw control characters in the message for ${describeInput(input)}`);
        assert.ok(e.message.length < 400, 'the spec is cut short in messages');
        assert.ok(e.hint);
        kinds.usage!++;
        return;
      }
      kinds[spec.kind] = (kinds[spec.kind] ?? 0) + 1;
      try {
        checkSpec(input as string, spec);
      } catch (e) {
        assert.fail(`seed ${SEED}: parseDeviceSpec(${describeInput(input)}) = ${describeInput(spec)}: ${(e as Error).message}`);
      }
    });
    t.diagnostic(`seed ${SEED}: ${n} specs, outcomes ${describeInput(kinds)}`);
  });

  test('openDevice with what `bind` passes it (spec, --route, --*-fd, ownFds): only VfioErrors, nothing left open', (t) => {
    const k = fuzzHost();
    const outcomes: Record<string, number> = {};
    let odd = 0;
    const n = forSeconds(SEED ^ 0x5bd1e995, (r, i) => {
      if (i % 500 === 0) k.calls.length = 0; // the call log would grow without bound
      const spec = r() < 0.02 ? (pick(r, [undefined, null, 7]) as unknown as string) : mutate(r);
      // --route: yargs checks choices, but a failed check does not stop the command (see cli.test.ts)
      const route = (r() < 0.85 ? pick(r, ROUTE_POLICIES) : r() < 0.5 ? '' : mutateOnce(r, pick(r, ROUTE_POLICIES))) as RoutePolicy;
      // --device-fd & co: type number, so NaN, fractions, negatives, huge numbers; or fds the test opened
      const mine: number[] = [];
      let fds: PassedFds | undefined;
      if (r() < 0.3) {
        fds = {};
        const node = (p: string): number => {
          try {
            const fd = k.open(p);
            mine.push(fd);
            return fd;
          } catch {
            return 99998; // the parent could not open it (a group node opened twice answers EBUSY): pass a dead number
          }
        };
        const value = (good: () => number): number => (r() < 0.7 ? good() : pick(r, [Number.NaN, -1, 1.5, 2 ** 31, Infinity, 99999, 0]));
        if (r() < 0.5) {
          if (r() < 0.9) fds.device = value(() => node(pick(r, ['/dev/vfio/devices/vfio0', '/dev/vfio/devices/vfio1', '/dev/iommu'])));
          if (r() < 0.9) fds.iommufd = value(() => node(pick(r, ['/dev/iommu', '/dev/vfio/vfio'])));
        } else {
          if (r() < 0.9) fds.group = value(() => node(pick(r, ['/dev/vfio/3', '/dev/vfio/4', '/dev/vfio/vfio'])));
          if (r() < 0.9) fds.container = value(() => node(pick(r, ['/dev/vfio/vfio', '/dev/vfio/3'])));
        }
      }
      const ownFds = r() < 0.5;
      const input = { spec, route, fds, ownFds };
      try {
        const dev = openDevice(spec, { kernel: k, route, ...(fds ? { fds, ownFds } : {}) });
        outcomes[`bound (${dev.route})`] = (outcomes[`bound (${dev.route})`] ?? 0) + 1;
        if (!(ROUTE_POLICIES as readonly string[]).includes(route)) odd++;
        dev.close();
      } catch (e) {
        if (!(e instanceof VfioError)) {
          assert.fail(`seed ${SEED}, iteration ${i}: openDevice(${describeInput(input)}) threw ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
        }
        outcomes[e.kind] = (outcomes[e.kind] ?? 0) + 1;
      }
      // the library leaves only the test's own fds (lent, or owned and left by a failed check)
      const left = k.openPaths();
      for (const fd of mine) if (k.describeFd(fd)) k.close(fd);
      assert.equal(k.openFds(), 0, `seed ${SEED}, iteration ${i}: the library left ${describeInput(left)} open after ${describeInput(input)}`);
      assert.deepEqual(k.badCloses, [], `seed ${SEED}, iteration ${i}: an fd closed twice after ${describeInput(input)}`);
      assert.equal(k.liveMappings(), 0);
      for (const g of [3, 4, 5, 7, 9]) assert.equal(k.groupHolder(g), null, `seed ${SEED}, iteration ${i}: group ${g} left held`);
      for (const d of [EDU, TESTDEV, '0000:00:14.0', MDEV]) assert.equal(k.deviceOpenCount(d), 0, `seed ${SEED}, iteration ${i}: ${d} left bound`);
    });
    t.diagnostic(`seed ${SEED}: ${n} opens, outcomes ${describeInput(outcomes)}; ${odd} bound with a route that is not a RoutePolicy`);
  });
});
