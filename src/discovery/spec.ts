// Device specs as users type them, validated before anything is opened.
import { UsageError } from '../errors.js';

export type DeviceSpec =
  | { kind: 'pci'; address: string } // normalized 0000:00:10.0
  | { kind: 'mdev'; uuid: string }
  | { kind: 'sysfs'; path: string } // a path under /sys, resolved and checked later
  | { kind: 'cdev'; name: string }; // vfioN, from /dev/vfio/devices/vfioN

const MAX_SPEC = 256;
// Domains are 4 hex digits, or more past 0xffff (Intel VMD's start at 10000).
const PCI = /^(?:([0-9a-f]{4,8}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$/i;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const CDEV = /^\/dev\/vfio\/devices\/(vfio[0-9]{1,6})$/;

const usage = (spec: string, why: string): UsageError =>
  new UsageError(`invalid device "${printable(spec)}": ${why}`, {
    hint: 'name a device as a PCI address (0000:00:10.0 or 00:10.0), a sysfs device path, /dev/vfio/devices/vfioN, or an mdev UUID',
  });

/** The spec with control characters made visible, for messages. */
export function printable(spec: string): string {
  const cut = spec.length > 80 ? `${spec.slice(0, 77)}...` : spec;
  return cut.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

export function parseDeviceSpec(spec: string): DeviceSpec {
  if (typeof spec !== 'string') throw usage(String(spec), `it is a ${spec === null ? 'null' : typeof spec}, not a string`);
  if (spec.length === 0) throw usage(spec, 'it is empty');
  if (spec.length > MAX_SPEC) throw usage(spec, `it is longer than ${MAX_SPEC} characters`);
  if (/[\u0000-\u001f\u007f-\u009f]/.test(spec)) throw usage(spec, 'it contains control characters');
  const pci = PCI.exec(spec);
  if (pci) {
    const [, domain = '0000', bus, dev, fn] = pci;
    if (parseInt(dev!, 16) > 0x1f) throw usage(spec, `device number 0x${dev} is out of range (at most 0x1f)`);
    return { kind: 'pci', address: `${domain}:${bus}:${dev}.${fn}`.toLowerCase() };
  }
  if (UUID.test(spec)) return { kind: 'mdev', uuid: spec.toLowerCase() };
  const cdev = CDEV.exec(spec);
  if (cdev) return { kind: 'cdev', name: cdev[1]! };
  if (spec.startsWith('/sys/')) {
    if (spec.split('/').some((part) => part === '..' || part === '.')) throw usage(spec, 'the path has "." or ".." components');
    return { kind: 'sysfs', path: spec.replace(/\/+$/, '') };
  }
  if (spec.startsWith('/dev/')) throw usage(spec, 'the only device nodes accepted are /dev/vfio/devices/vfioN');
  if (/^[0-9a-f:.]+$/i.test(spec)) throw usage(spec, 'not a PCI address of the form [DDDD:]BB:DD.F');
  throw usage(spec, 'not a PCI address, sysfs path, VFIO cdev or mdev UUID');
}
