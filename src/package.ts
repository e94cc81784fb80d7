// The installed package itself: where its root is (for the native addon) and its version (for
// `vfio-bind --version`), found from this module's own file, never from the process's cwd: a CLI
// run from a consumer's project must not report that project's package.json.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const NAME = 'vfio-bind';

/** This module's file: the ES module compiled by tsc (dist/src), or the CLI's CommonJS bundle (dist/cli). */
const thisFile = (): string => (typeof __filename === 'string' ? __filename : fileURLToPath(import.meta.url));

let root: { dir: string; version: string } | undefined;

/** The nearest directory above this module whose package.json is vfio-bind's. */
function findRoot(): { dir: string; version: string } {
  let dir = path.dirname(thisFile());
  for (;;) {
    const manifest = path.join(dir, 'package.json');
    if (fs.existsSync(manifest)) {
      try {
        const pkg = JSON.parse(fs.readFileSync(manifest, 'utf8')) as { name?: unknown; version?: unknown };
        if (pkg.name === NAME && typeof pkg.version === 'string') return { dir, version: pkg.version };
      } catch {
        // not JSON (or unreadable): not ours, keep looking
      }
    }
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`${NAME}'s package.json was not found above ${thisFile()}`);
    dir = parent;
  }
}

/** The package's root directory (where package.json, prebuilds/ and build/ are). */
export function packageRoot(): string {
  return (root ??= findRoot()).dir;
}

/** vfio-bind's own version, from its package.json. */
export function packageVersion(): string {
  return (root ??= findRoot()).version;
}
