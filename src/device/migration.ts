// VFIO migration v2, as far as a device says what it supports (VFIO_DEVICE_FEATURE_MIGRATION). The
// state machine and the data stream come next (issue 15), in this file.
import { deviceFeatureGetMigration, deviceFeatureProbe } from '../ioctl/device.js';
import type { StepCalls } from '../sys/calls.js';
import { VFIO_MIGRATION } from '../uapi/vfio.js';

export type MigrationFlag = keyof typeof VFIO_MIGRATION;

export interface MigrationSupport {
  /** STOP_COPY (every migratable device), P2P, PRE_COPY */
  flags: MigrationFlag[];
}

/** The device's migration support, or null when it has no migration (the probe answers ENOTTY). */
export function readMigration(calls: StepCalls, deviceFd: number): MigrationSupport | null {
  if (!deviceFeatureProbe(calls, deviceFd, 'MIGRATION', 'get')) return null;
  const { flags } = deviceFeatureGetMigration(calls, deviceFd);
  return { flags: (Object.entries(VFIO_MIGRATION) as [MigrationFlag, number][]).filter(([, bit]) => (flags & BigInt(bit)) !== 0n).map(([name]) => name) };
}
