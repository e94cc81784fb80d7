// Small helpers for the benchmark scripts: medians and ratio lines.
export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** One result line: what, ours, the baseline, and ours/baseline against the goal (if the issue sets one). */
export function ratioLine(what: string, ours: number, base: number, unit: string, goal?: number): string {
  const ratio = ours / base;
  const verdict = goal === undefined ? 'no goal set' : `${ratio <= goal ? 'meets' : 'misses'} goal <= ${goal.toFixed(2)}x`;
  return `${what.padEnd(44)} ${ours.toFixed(1).padStart(10)} ${unit} vs ${base.toFixed(1).padStart(10)} ${unit}  ratio ${ratio.toFixed(2)}x (${verdict})`;
}
