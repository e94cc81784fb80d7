// One MMIO access as test/vm/mmio-direct.test.ts compares them: [op, offset, size, hex value].
export type Access = [op: string, offset: number, size: number, value: string];
export type AccessRun = [...Access, count: number];

/** consecutive equal accesses as one run with their count (a polling loop's thousands of reads) */
export function runs(accesses: Iterable<Access>): AccessRun[] {
  const out: AccessRun[] = [];
  for (const a of accesses) {
    const last = out.at(-1);
    if (last && last[0] === a[0] && last[1] === a[1] && last[2] === a[2] && last[3] === a[3]) last[4]++;
    else out.push([...a, 1]);
  }
  return out;
}
