// Checks every ioctl number, struct size, field offset, field width and constant in src/uapi against
// the kernel's own uAPI headers (linux-libc-dev 6.12 from bookworm-backports), by compiling a C
// program that prints what the headers say.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as uapi from '../../src/uapi/index.js';
import type { StructLayout } from '../../src/uapi/struct.js';

const root = path.resolve(import.meta.dirname, '../../..');
const WIDTH = { u8: 1, u16: 2, u32: 4, s32: 4, u64: 8 } as const;

/** C expression -> the value our TypeScript holds for it */
function expectations(): Map<string, number> {
  const want = new Map<string, number>();
  for (const [name, value] of Object.entries(uapi.VFIO)) want.set(`VFIO_${name}`, value);
  for (const [name, value] of Object.entries(uapi.IOMMU)) want.set(`IOMMU_${name}`, value);
  const constants: Record<string, number> = {
    VFIO_API_VERSION: uapi.VFIO_API_VERSION,
    VFIO_TYPE1_IOMMU: uapi.VFIO_TYPE1_IOMMU,
    VFIO_TYPE1v2_IOMMU: uapi.VFIO_TYPE1v2_IOMMU,
    VFIO_NOIOMMU_IOMMU: uapi.VFIO_NOIOMMU_IOMMU,
    VFIO_GROUP_FLAGS_VIABLE: uapi.VFIO_GROUP_FLAGS_VIABLE,
    VFIO_GROUP_FLAGS_CONTAINER_SET: uapi.VFIO_GROUP_FLAGS_CONTAINER_SET,
    VFIO_REGION_INFO_CAP_SPARSE_MMAP: uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_CAP_TYPE: uapi.VFIO_REGION_INFO_CAP_TYPE,
    VFIO_PCI_NUM_REGIONS: uapi.VFIO_PCI_NUM_REGIONS,
    VFIO_IOMMU_INFO_PGSIZES: uapi.VFIO_IOMMU_INFO_PGSIZES,
    VFIO_IOMMU_INFO_CAPS: uapi.VFIO_IOMMU_INFO_CAPS,
    VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: uapi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL: uapi.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
    VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: uapi.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION,
    IOMMU_HWPT_DATA_NONE: uapi.IOMMU_HWPT_DATA_NONE,
    IOMMU_HWPT_DIRTY_TRACKING_ENABLE: uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE,
    IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR: uapi.IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR,
  };
  for (const [name, value] of Object.entries(constants)) want.set(name, value);
  const groups: [string, Record<string, number>][] = [
    ['VFIO_DEVICE_FLAGS_', uapi.VFIO_DEVICE_FLAGS],
    ['VFIO_REGION_INFO_FLAG_', uapi.VFIO_REGION_INFO_FLAG],
    ['VFIO_PCI_', Object.fromEntries(Object.entries(uapi.VFIO_PCI_REGION).map(([k, v]) => [`${k}_REGION_INDEX`, v]))],
    ['VFIO_PCI_', Object.fromEntries(Object.entries(uapi.VFIO_PCI_IRQ).map(([k, v]) => [`${k}_IRQ_INDEX`, v]))],
    ['VFIO_IRQ_INFO_', uapi.VFIO_IRQ_INFO_FLAG],
    ['VFIO_IRQ_SET_', uapi.VFIO_IRQ_SET],
    ['VFIO_DMA_MAP_FLAG_', uapi.VFIO_DMA_MAP_FLAG],
    ['IOMMU_IOAS_MAP_', uapi.IOMMU_IOAS_MAP_FLAG],
    ['VFIO_DEVICE_FEATURE_', uapi.VFIO_DEVICE_FEATURE_FLAG],
    ['VFIO_DEVICE_FEATURE_', uapi.VFIO_DEVICE_FEATURE_INDEX],
    ['VFIO_MIGRATION_', uapi.VFIO_MIGRATION],
    ['VFIO_DEVICE_STATE_', uapi.VFIO_DEVICE_STATE],
    ['VFIO_IOMMU_DIRTY_PAGES_FLAG_', uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG],
    ['VFIO_DMA_UNMAP_FLAG_', uapi.VFIO_DMA_UNMAP_FLAG],
    ['IOMMU_HW_INFO_TYPE_', uapi.IOMMU_HW_INFO_TYPE],
    ['IOMMU_HW_CAP_', uapi.IOMMU_HW_CAP],
    ['IOMMU_HWPT_ALLOC_', uapi.IOMMU_HWPT_ALLOC_FLAG],
  ];
  for (const [prefix, map] of groups) for (const [name, value] of Object.entries(map)) want.set(`${prefix}${name}`, value);
  return want;
}

function program(structs: readonly StructLayout[], values: Map<string, number>): string {
  const lines = [
    '#include <stddef.h>', '#include <stdio.h>', '#include <linux/vfio.h>', '#include <linux/iommufd.h>',
    'int main(void) {',
  ];
  for (const s of structs) {
    lines.push(`  printf("size %s %zu\\n", "${s.cName}", sizeof(struct ${s.cName}));`);
    for (const [field, [type]] of Object.entries(s.fields)) {
      const member = `((struct ${s.cName} *)0)->${field}`;
      lines.push(`  printf("field %s.%s %zu %zu %d\\n", "${s.cName}", "${field}", offsetof(struct ${s.cName}, ${field}), sizeof(${member}), (int)((__typeof__(${member}))-1 < 0));`);
      void type;
    }
  }
  for (const name of values.keys()) lines.push(`  printf("value %s %llu\\n", "${name}", (unsigned long long)(${name}));`);
  lines.push('  return 0;', '}');
  return lines.join('\n');
}

test('src/uapi matches the kernel uAPI headers (linux-libc-dev 6.12)', () => {
  const include = execFileSync(path.join(root, 'testbed/uapi-headers.sh'), { encoding: 'utf8' }).trim();
  const structs = [...uapi.VFIO_STRUCTS, ...uapi.IOMMUFD_STRUCTS, ...uapi.MIGRATION_STRUCTS] as readonly StructLayout[];
  const values = expectations();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-bind-uapi-'));
  try {
    fs.writeFileSync(path.join(dir, 'check.c'), program(structs, values));
    execFileSync('gcc', ['-Wall', '-Werror', `-I${include}/x86_64-linux-gnu`, `-I${include}`, '-o', path.join(dir, 'check'), path.join(dir, 'check.c')]);
    const output = execFileSync(path.join(dir, 'check'), { encoding: 'utf8' });
    const problems: string[] = [];
    let checked = 0;
    for (const line of output.trim().split('\n')) {
      const [kind, name, ...rest] = line.split(' ');
      checked++;
      if (kind === 'size') {
        const ours = structs.find((s) => s.cName === name)!;
        if (ours.size !== Number(rest[0])) problems.push(`sizeof(struct ${name}): headers ${rest[0]}, ours ${ours.size}`);
      } else if (kind === 'field') {
        const dot = name!.indexOf('.');
        const [cName, field] = [name!.slice(0, dot), name!.slice(dot + 1)]; // a nested member keeps its dots (bitmap.pgsize)
        const [type, offset] = structs.find((s) => s.cName === cName)!.fields[field]!;
        const [hOffset, hSize, hSigned] = rest.map(Number) as [number, number, number];
        if (offset !== hOffset) problems.push(`offsetof(${name}): headers ${hOffset}, ours ${offset}`);
        if (WIDTH[type] !== hSize) problems.push(`sizeof(${name}): headers ${hSize}, ours ${WIDTH[type]} (${type})`);
        if ((type === 's32') !== (hSigned === 1)) problems.push(`signedness of ${name}: headers ${hSigned ? 'signed' : 'unsigned'}, ours ${type}`);
      } else if (kind === 'value') {
        if (values.get(name!) !== Number(rest[0])) problems.push(`${name}: headers ${rest[0]}, ours ${values.get(name!)}`);
      }
    }
    assert.deepEqual(problems, []);
    // every struct, field and value was printed and compared
    const expected = structs.length + structs.reduce((n, s) => n + Object.keys(s.fields).length, 0) + values.size;
    assert.equal(checked, expected);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
