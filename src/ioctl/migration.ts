// The call layer for VFIO migration v2 and device DMA logging: the VFIO_DEVICE_FEATURE requests that
// move a device between migration states, size its data, and log its DMA, and the one ioctl of the
// data fd (VFIO_MIG_GET_PRECOPY_INFO). One typed function per request; each failure names its
// feature (VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE...), not the shared VFIO_DEVICE_FEATURE.
import type { StepCalls } from '../sys/calls.js';
import type { Kernel } from '../sys/kernel.js';
import {
  vfio_device_feature_dma_logging_control,
  vfio_device_feature_dma_logging_range,
  vfio_device_feature_dma_logging_report,
  vfio_device_feature_mig_data_size,
  vfio_device_feature_mig_state,
  vfio_precopy_info,
} from '../uapi/migration.js';
import { decode, encode, type Decoded, type Encodable, type FieldSpecs, type StructLayout } from '../uapi/struct.js';
import { VFIO_DEVICE_FEATURE_FLAG, VFIO_DEVICE_FEATURE_INDEX, vfio_device_feature } from '../uapi/vfio.js';
import { withScratch } from './scratch.js';

type Feature = keyof typeof VFIO_DEVICE_FEATURE_INDEX;

/** One VFIO_DEVICE_FEATURE GET or SET with the feature's data after the header; returns the data as the kernel left it. */
function feature<D extends FieldSpecs>(calls: StepCalls, deviceFd: number, name: Feature, op: 'get' | 'set',
  layout: StructLayout<D> | null, values: Encodable<D> = {}): Decoded<D> | null {
  const dataSize = layout?.size ?? 0;
  const buf = Buffer.alloc(vfio_device_feature.size + dataSize);
  const flags = VFIO_DEVICE_FEATURE_INDEX[name] | (op === 'get' ? VFIO_DEVICE_FEATURE_FLAG.GET : VFIO_DEVICE_FEATURE_FLAG.SET);
  encode(vfio_device_feature, { argsz: buf.length, flags }).copy(buf);
  if (layout) encode(layout, values).copy(buf, vfio_device_feature.size);
  calls.ioctl('VFIO_DEVICE_FEATURE', deviceFd, buf, `VFIO_DEVICE_FEATURE_${name}`);
  return layout ? decode(layout, buf, vfio_device_feature.size) : null;
}

/** VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE GET: the device's migration state (enum vfio_device_mig_state). */
export function migGetState(calls: StepCalls, deviceFd: number): number {
  return feature(calls, deviceFd, 'MIG_DEVICE_STATE', 'get', vfio_device_feature_mig_state, { data_fd: -1 })!.device_state;
}

/**
 * VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE SET: moves the device to `state` (the kernel walks the arcs
 * between). Returns the data fd of a new data transfer session, or -1 when the move starts none. The
 * caller owns the fd.
 */
export function migSetState(calls: StepCalls, deviceFd: number, state: number): { dataFd: number } {
  return { dataFd: feature(calls, deviceFd, 'MIG_DEVICE_STATE', 'set', vfio_device_feature_mig_state, { device_state: state, data_fd: -1 })!.data_fd };
}

/** VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: the device's estimate of its STOP_COPY stream, in bytes. */
export function migDataSize(calls: StepCalls, deviceFd: number): bigint {
  return feature(calls, deviceFd, 'MIG_DATA_SIZE', 'get', vfio_device_feature_mig_data_size)!.stop_copy_length;
}

/** VFIO_MIG_GET_PRECOPY_INFO, on a data fd in PRE_COPY or PRE_COPY_P2P. */
export function migPrecopyInfo(calls: StepCalls, dataFd: number): { initialBytes: bigint; dirtyBytes: bigint } {
  const buf = encode(vfio_precopy_info, { argsz: vfio_precopy_info.size });
  calls.ioctl('VFIO_MIG_GET_PRECOPY_INFO', dataFd, buf);
  const info = decode(vfio_precopy_info, buf);
  return { initialBytes: info.initial_bytes, dirtyBytes: info.dirty_bytes };
}

export interface IovaRange {
  iova: bigint;
  length: bigint;
}

/**
 * VFIO_DEVICE_FEATURE_DMA_LOGGING_START over the given IOVA ranges (the list lives in addon memory:
 * the kernel reads it through a pointer). Returns the page size the device chose.
 */
export function dmaLoggingStart(calls: StepCalls, kernel: Kernel, deviceFd: number, pageSize: bigint, ranges: readonly IovaRange[]): { pageSize: bigint } {
  const R = vfio_device_feature_dma_logging_range;
  return withScratch(calls, kernel, 'allocate the DMA logging ranges', ranges.length * R.size, (list, address) => {
    ranges.forEach((r, i) => encode(R, { iova: r.iova, length: r.length }).copy(list, i * R.size));
    const out = feature(calls, deviceFd, 'DMA_LOGGING_START', 'set', vfio_device_feature_dma_logging_control,
      { page_size: pageSize, num_ranges: ranges.length, ranges: address })!;
    return { pageSize: out.page_size };
  });
}

/** VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP. */
export function dmaLoggingStop(calls: StepCalls, deviceFd: number): void {
  feature(calls, deviceFd, 'DMA_LOGGING_STOP', 'set', null);
}

/**
 * VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT: reads and clears the device's log for [iova, iova+length),
 * setting one bit per page_size in the bitmap at `bitmap` (addon memory the caller zeroed; the
 * kernel only sets bits).
 */
export function dmaLoggingReport(calls: StepCalls, deviceFd: number, range: IovaRange, pageSize: bigint, bitmap: bigint): void {
  feature(calls, deviceFd, 'DMA_LOGGING_REPORT', 'get', vfio_device_feature_dma_logging_report,
    { iova: range.iova, length: range.length, page_size: pageSize, bitmap });
}
