// /proc, and the other process: /proc/<pid>/fd of this process (every fd the fake hands out, see
// files.ts) and of "another process" (holdGroupElsewhere, bindElsewhere, openElsewhere),
// /proc/self -> /proc/<pid>, /proc/self/limits (RLIMIT_MEMLOCK), and what doctor reads:
// /proc/interrupts (IR- domains or not), /proc/cmdline, /proc/self/status (CapEff), and the kernel
// config (written by host.ts to /boot/config-<release> or /proc/config.gz).
import { findDevice, groupName, type FakeState } from './state.js';
import { remove, symlink, writeFile } from './sysfs.js';
import type { HostOptions } from './types.js';

/** /proc/<pid>/status: the capability sets as this process has them */
export function procStatus(s: FakeState): string {
  const CAP_IPC_LOCK = 1n << 14n;
  const CAP_SYS_RAWIO = 1n << 17n;
  let caps = s.root ? 0x1ffffffffffn & ~CAP_IPC_LOCK & ~CAP_SYS_RAWIO : 0n;
  if (s.ipcLock) caps |= CAP_IPC_LOCK;
  if (s.rawio) caps |= CAP_SYS_RAWIO;
  const hex16 = (n: bigint): string => n.toString(16).padStart(16, '0');
  const uid = s.root ? 0 : 1000;
  return [
    'Name:\tnode', 'State:\tR (running)', `Pid:\t${s.pid}`, `Uid:\t${uid}\t${uid}\t${uid}\t${uid}`, `Gid:\t${uid}\t${uid}\t${uid}\t${uid}`,
    'CapInh:\t0000000000000000', `CapPrm:\t${hex16(caps)}`, `CapEff:\t${hex16(caps)}`, `CapBnd:\t${hex16(0x1ffffffffffn)}`, 'CapAmb:\t0000000000000000',
  ].join('\n');
}

/** RLIMIT_MEMLOCK, as /proc/self/limits shows it (bytes, or 'unlimited') */
export function setMemlock(s: FakeState, soft: number | 'unlimited', hard: number | 'unlimited'): void {
  const n = (v: number | 'unlimited'): number => (v === 'unlimited' ? Infinity : v);
  s.memlockLimit = { soft: n(soft), hard: n(hard) };
  writeLimits(s);
}

export function writeLimits(s: FakeState): void {
  const v = (n: number): string => (n === Infinity ? 'unlimited' : String(n));
  const row = (name: string, soft: string, hard: string, units: string): string =>
    `${name.padEnd(26)}${soft.padEnd(21)}${hard.padEnd(21)}${units.padEnd(10)}`;
  writeFile(s, `/proc/${s.pid}/limits`, [
    row('Limit', 'Soft Limit', 'Hard Limit', 'Units'),
    row('Max cpu time', 'unlimited', 'unlimited', 'seconds'),
    row('Max file size', 'unlimited', 'unlimited', 'bytes'),
    row('Max data size', 'unlimited', 'unlimited', 'bytes'),
    row('Max stack size', '8388608', 'unlimited', 'bytes'),
    row('Max core file size', '0', 'unlimited', 'bytes'),
    row('Max resident set', 'unlimited', 'unlimited', 'bytes'),
    row('Max processes', '7823', '7823', 'processes'),
    row('Max open files', '1024', '524288', 'files'),
    row('Max locked memory', v(s.memlockLimit.soft), v(s.memlockLimit.hard), 'bytes'),
    row('Max address space', 'unlimited', 'unlimited', 'bytes'),
    row('Max file locks', 'unlimited', 'unlimited', 'locks'),
    row('Max pending signals', '7823', '7823', 'signals'),
    row('Max msgqueue size', '819200', '819200', 'bytes'),
    row('Max nice priority', '0', '0', ''),
    row('Max realtime priority', '0', '0', ''),
    row('Max realtime timeout', 'unlimited', 'unlimited', 'us'),
  ].join('\n'));
}

/** the test bed's kernel command lines */
export function defaultCmdline(release: string, iommu: HostOptions['iommu'], unsafe: { iommufd: boolean; type1: boolean }): string {
  const parts = [`BOOT_IMAGE=/boot/vmlinuz-${release}`, 'root=/dev/vda1', 'ro', 'console=ttyS0'];
  if (iommu === 'intel') parts.push('intel_iommu=on');
  if (iommu === 'noiommu') parts.push('vfio.enable_unsafe_noiommu_mode=1');
  if (unsafe.type1) parts.push('vfio_iommu_type1.allow_unsafe_interrupts=1');
  if (unsafe.iommufd) parts.push('iommufd.allow_unsafe_interrupts=1');
  return parts.join(' ');
}

/** /proc/interrupts of a 2-CPU x86 guest: IR-IO-APIC and IR-PCI-MSI* domains when interrupts are remapped;
 *  of an arm64 guest (smmuv3) before any device allocated an MSI: the GICv3's own, no ITS-MSI line */
export function procInterrupts(remapped: boolean, iommu: HostOptions['iommu']): string {
  const ir = remapped ? 'IR-' : '';
  const row = (irq: string, a: number, b: number, chip: string): string => `${`${irq}:`.padStart(4)} ${String(a).padStart(10)} ${String(b).padStart(10)}  ${chip}`;
  if (iommu === 'smmuv3') {
    return [
      '           CPU0       CPU1',
      row('10', 5123, 4987, 'GICv3  27 Level     arch_timer'),
      row('12', 412, 0, 'GICv3  33 Level     uart-pl011'),
      row('13', 0, 0, 'GICv3 140 Edge      arm-smmu-v3-evtq'),
      row('IPI0', 230, 251, '      Rescheduling interrupts'),
    ].join('\n');
  }
  return [
    '            CPU0       CPU1',
    row('0', 36, 0, `${ir}IO-APIC    2-edge      timer`),
    row('1', 0, 9, `${ir}IO-APIC    1-edge      i8042`),
    row('4', 0, 512, `${ir}IO-APIC    4-edge      ttyS0`),
    ...(iommu === 'intel' ? [row('24', 0, 0, 'DMAR-MSI    0-edge      dmar0')] : []),
    row('25', 0, 0, `${ir}PCI-MSI-0000:00:01.0    0-edge      virtio0-config`),
    row('26', 1843, 0, `${ir}PCI-MSIX-0000:00:02.0    0-edge      virtio1-req.0`),
    row('NMI', 0, 0, ' Non-maskable interrupts'),
    row('LOC', 12345, 11234, ' Local timer interrupts'),
  ].join('\n');
}

/** the options doctor looks at, as Debian's 6.1 (stock) or the test bed's 6.12c (iommufd) sets them */
export function kernelConfigText(iommufd: boolean): string {
  const opt = (name: string, value: string | null): string => (value === null ? `# ${name} is not set` : `${name}=${value}`);
  return [
    '#', '# Automatically generated file; DO NOT EDIT.', '#',
    opt('CONFIG_IOMMU_SUPPORT', 'y'), opt('CONFIG_INTEL_IOMMU', 'y'), opt('CONFIG_IRQ_REMAP', 'y'),
    opt('CONFIG_IOMMUFD', iommufd ? 'm' : null), opt('CONFIG_VFIO', 'm'), opt('CONFIG_VFIO_CONTAINER', 'y'),
    opt('CONFIG_VFIO_DEVICE_CDEV', iommufd ? 'y' : null), opt('CONFIG_VFIO_NOIOMMU', 'y'), opt('CONFIG_VFIO_PCI', 'm'),
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------------
// another process

/** Another process holds the group open through the legacy route. */
export function holdGroupElsewhere(s: FakeState, groupId: number): void {
  const g = s.groups.get(groupId);
  if (!g) throw new Error(`fake: no group ${groupId}`);
  if (g.openedBy !== null) throw new Error(`fake: group ${groupId} is already open`);
  g.openedBy = 'elsewhere';
  openElsewhere(s, `/dev/vfio/${groupName(g)}`, s.otherPid);
}

/** Another process opened the device's cdev and bound it to its iommufd. */
export function bindElsewhere(s: FakeState, name: string): void {
  const dev = findDevice(s, name);
  if (dev.openCount > 0) throw new Error(`fake: ${name} is already open`);
  dev.openCount++;
  dev.boundElsewhere = true;
  if (dev.group) dev.group.cdevBound++;
  if (dev.cdevIndex !== null && dev.cdevIndex >= 0) openElsewhere(s, `/dev/vfio/devices/vfio${dev.cdevIndex}`, s.otherPid);
}

/**
 * Another process (pid otherPid, or the one given) has `target` open: an entry in its /proc/<pid>/fd,
 * nothing more (holdGroupElsewhere and bindElsewhere also change the kernel's state).
 */
export function openElsewhere(s: FakeState, target: string, pid: number): void {
  symlink(s, `/proc/${pid}/fd/${s.otherFds++}`, target);
}

/** The other process exits. */
export function releaseElsewhere(s: FakeState): void {
  const proc = s.fs.get('/proc');
  for (const name of proc?.kind === 'dir' ? [...proc.children] : []) {
    if (/^[0-9]+$/.test(name) && Number(name) !== s.pid) remove(s, `/proc/${name}`); // its /proc/<pid> goes
  }
  for (const g of s.groups.values()) if (g.openedBy === 'elsewhere') g.openedBy = null;
  for (const d of s.devices.values()) {
    if (!d.boundElsewhere) continue;
    d.boundElsewhere = false;
    d.openCount--;
    if (d.group) d.group.cdevBound--;
  }
}
