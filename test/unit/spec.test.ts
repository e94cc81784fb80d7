// Device specs as users type them: each gives the right kind, or a UsageError (exit 2) before anything
// is opened.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { parseDeviceSpec, printable, type DeviceSpec } from '../../src/discovery/spec.js';
import { ExitCode, UsageError } from '../../src/errors.js';
import { catchError, prng } from '../helpers.js';

function usage(spec: string, why?: RegExp): UsageError {
  const e = catchError(() => parseDeviceSpec(spec), UsageError);
  assert.equal(e.exitCode, ExitCode.USAGE);
  assert.equal(e.exitCode, 2);
  assert.equal(e.kind, 'usage');
  assert.ok(e.hint, 'a usage error says how to name a device');
  if (why) assert.match(e.message, why);
  return e;
}

describe('PCI addresses', () => {
  const valid: [string, string][] = [
    ['0000:00:10.0', '0000:00:10.0'],
    ['00:10.0', '0000:00:10.0'],
    ['0000:00:1f.7', '0000:00:1f.7'],
    ['0000:00:1F.7', '0000:00:1f.7'],
    ['ABCD:EF:01.3', 'abcd:ef:01.3'],
    ['ffff:ff:1f.7', 'ffff:ff:1f.7'],
    ['0001:3a:00.0', '0001:3a:00.0'],
  ];
  for (const [spec, address] of valid) {
    test(`${spec} -> pci ${address}`, () => {
      assert.deepEqual(parseDeviceSpec(spec), { kind: 'pci', address });
    });
  }

  test('device number above 0x1f is refused, naming the limit', () => {
    usage('0000:00:20.0', /device number 0x20 is out of range \(at most 0x1f\)/);
    usage('00:ff.0', /out of range/);
  });

  test('function above 7 is refused', () => {
    usage('0000:00:10.8', /not a PCI address of the form/);
    usage('0000:00:10.f', /not a PCI address/);
  });

  test('bad hex and missing parts are refused', () => {
    for (const spec of ['0000:00:1g.0', '0000:0x:10.0', 'zz:10.0', '0000:00:10', '0000:00:10.', '00:10', '10.0', ':00:10.0',
      '0000::10.0', '000000000:00:10.0', '000:00:10.0', '0000:000:10.0', '0000:00:100.0', '0000:00:10.00', ' 0000:00:10.0', '0000:00:10.0 ']) {
      usage(spec);
    }
  });
});

describe('mdev UUIDs', () => {
  test('a UUID is an mdev, lower-cased', () => {
    assert.deepEqual(parseDeviceSpec('83b8f4f2-509f-382f-3c1e-e6bfe0fa1001'), { kind: 'mdev', uuid: '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001' });
    assert.deepEqual(parseDeviceSpec('83B8F4F2-509F-382F-3C1E-E6BFE0FA1001'), { kind: 'mdev', uuid: '83b8f4f2-509f-382f-3c1e-e6bfe0fa1001' });
  });
  test('malformed UUIDs are refused', () => {
    for (const spec of ['83b8f4f2-509f-382f-3c1e-e6bfe0fa100', '83b8f4f2509f382f3c1ee6bfe0fa1001', '83b8f4f2-509f-382f-3c1e-e6bfe0fa100g', '{83b8f4f2-509f-382f-3c1e-e6bfe0fa1001}']) {
      usage(spec);
    }
  });
});

describe('VFIO cdev nodes', () => {
  test('/dev/vfio/devices/vfioN is a cdev spec', () => {
    assert.deepEqual(parseDeviceSpec('/dev/vfio/devices/vfio0'), { kind: 'cdev', name: 'vfio0' });
    assert.deepEqual(parseDeviceSpec('/dev/vfio/devices/vfio123456'), { kind: 'cdev', name: 'vfio123456' });
  });
  test('other /dev paths are refused, naming the one accepted', () => {
    for (const spec of ['/dev/vfio/3', '/dev/vfio/vfio', '/dev/iommu', '/dev/vfio/noiommu-0', '/dev/vfio/devices/vfio', '/dev/vfio/devices/vfio1234567',
      '/dev/vfio/devices/vfio0/', '/dev/vfio/devices/../devices/vfio0', '/dev/char/246:0', '/dev/vfio/devices/vfiox']) {
      usage(spec, /the only device nodes accepted are \/dev\/vfio\/devices\/vfioN/);
    }
  });
});

describe('sysfs paths', () => {
  test('a path under /sys is kept for later resolution, without trailing slashes', () => {
    assert.deepEqual(parseDeviceSpec('/sys/bus/pci/devices/0000:00:10.0'), { kind: 'sysfs', path: '/sys/bus/pci/devices/0000:00:10.0' });
    assert.deepEqual(parseDeviceSpec('/sys/devices/pci0000:00/0000:00:10.0///'), { kind: 'sysfs', path: '/sys/devices/pci0000:00/0000:00:10.0' });
  });
  test('"." and ".." components are refused', () => {
    for (const spec of ['/sys/bus/pci/devices/../../../etc', '/sys/devices/./pci0000:00', '/sys/..', '/sys/devices/pci0000:00/0000:00:10.0/..']) {
      usage(spec, /"\." or "\.\." components/);
    }
  });
  test('relative paths and other roots are refused', () => {
    for (const spec of ['sys/bus/pci/devices/0000:00:10.0', '/proc/self/fd/3', '/etc/passwd', './0000:00:10.0', '/system']) usage(spec);
  });
});

describe('hostile input', () => {
  test('empty', () => {
    usage('', /it is empty/);
  });
  test('longer than 256 characters, even if otherwise valid; the message is cut', () => {
    const long = `/sys/devices/${'a'.repeat(300)}`;
    const e = usage(long, /longer than 256 characters/);
    assert.ok(e.message.length < 200, 'the message quotes at most 80 characters of the spec');
    assert.ok(e.message.includes('...'));
    assert.deepEqual(parseDeviceSpec(`/sys/${'a'.repeat(251)}`), { kind: 'sysfs', path: `/sys/${'a'.repeat(251)}` });
    usage(`/sys/${'a'.repeat(252)}`);
  });
  test('control characters are refused and shown escaped', () => {
    for (const c of ['\u0000', '\n', '\r', '\t', '\u001b', '\u007f', '\u0085', '\u009b']) {
      const e = usage(`0000:00:10.0${c}`, /control characters/);
      assert.ok(!/[\u0000-\u001f\u007f-\u009f]/.test(e.message), `the message contains a raw control character: ${JSON.stringify(e.message)}`);
    }
    assert.equal(printable('a\u001b[31mb'), 'a\\x1b[31mb');
  });
  test('unicode look-alikes are not addresses', () => {
    for (const spec of ['０000:00:10.0', '0000:00:10․0', '0000\uff1a00:10.0']) usage(spec);
  });
  test('a non-string (from untyped JavaScript) is a usage error', () => {
    for (const v of [undefined, null, 42, {}]) catchError(() => parseDeviceSpec(v as unknown as string), UsageError);
  });
});

describe('property: random strings', () => {
  const ALPHABET = '0123456789abcdefABCDEFgxz:.-/_ \u0000\n\u001b\u0085é０';
  const PARTS = ['0000', ':', '.', '/sys/', '/dev/', '/dev/vfio/devices/vfio', '..', '/', '-', 'vfio', '1f', '20', '7', '8'];

  function randomSpec(rnd: () => number): string {
    const n = Math.floor(rnd() * 24);
    let s = '';
    for (let i = 0; i < n; i++) {
      s += rnd() < 0.3 ? PARTS[Math.floor(rnd() * PARTS.length)] : ALPHABET[Math.floor(rnd() * ALPHABET.length)];
    }
    if (rnd() < 0.02) s = s.repeat(40);
    return s;
  }

  function validSpec(rnd: () => number): string {
    const hex = (digits: number, max = 16 ** digits - 1): string => {
      const v = Math.floor(rnd() * (max + 1)).toString(16).padStart(digits, '0');
      return rnd() < 0.5 ? v.toUpperCase() : v;
    };
    switch (Math.floor(rnd() * 4)) {
      case 0: return `${rnd() < 0.5 ? `${hex(4)}:` : ''}${hex(2)}:${hex(2, 0x1f)}.${Math.floor(rnd() * 8)}`;
      case 1: return `${hex(8)}-${hex(4)}-${hex(4)}-${hex(4)}-${hex(12)}`;
      case 2: return `/dev/vfio/devices/vfio${Math.floor(rnd() * 1_000_000)}`;
      default: return `/sys/devices/pci${hex(4)}:${hex(2)}/${hex(4)}:${hex(2)}:${hex(2, 0x1f)}.${Math.floor(rnd() * 8)}`;
    }
  }

  function roundTrip(parsed: DeviceSpec): void {
    const again = (s: string): void => assert.deepEqual(parseDeviceSpec(s), parsed);
    switch (parsed.kind) {
      case 'pci':
        assert.match(parsed.address, /^[0-9a-f]{4,8}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$/);
        again(parsed.address);
        again(parsed.address.toUpperCase());
        // without the domain, the address means domain 0000
        if (parsed.address.startsWith('0000:')) again(parsed.address.slice(5));
        else assert.notDeepEqual(parseDeviceSpec(parsed.address.slice(5)), parsed);
        return;
      case 'mdev':
        assert.equal(parsed.uuid, parsed.uuid.toLowerCase());
        return again(parsed.uuid.toUpperCase());
      case 'cdev':
        return again(`/dev/vfio/devices/${parsed.name}`);
      case 'sysfs':
        assert.ok(parsed.path.startsWith('/sys/') && !parsed.path.endsWith('/'));
        again(`${parsed.path}/`);
        return again(parsed.path);
    }
  }

  test('2,000 random strings: a DeviceSpec that round-trips, or a UsageError, never anything else', () => {
    const rnd = prng(0x5eed);
    const kinds: Record<string, number> = { usage: 0, pci: 0, mdev: 0, cdev: 0, sysfs: 0 };
    for (let i = 0; i < 2000; i++) {
      const spec = i % 2 === 0 ? randomSpec(rnd) : validSpec(rnd);
      let parsed: DeviceSpec;
      try {
        parsed = parseDeviceSpec(spec);
      } catch (e) {
        assert.ok(e instanceof UsageError, `${JSON.stringify(spec)} threw ${String(e)}`);
        assert.equal(e.exitCode, 2);
        kinds.usage!++;
        continue;
      }
      kinds[parsed.kind]!++;
      roundTrip(parsed);
    }
    // the generator reaches every outcome, so the property says something about each
    for (const [kind, n] of Object.entries(kinds)) assert.ok(n > 20, `only ${n} ${kind} outcomes`);
  });
});
