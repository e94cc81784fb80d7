#!/usr/bin/env node
// The installed `vfio-bind` command: a thin start for the compiled CLI (dist/cli/main.js, bundled by scripts/bundle.mjs).
import('../dist/cli/main.js').then((cli) => cli.main(process.argv.slice(2))).catch((e) => {
  // Only a broken installation gets here (main() reports its own errors): no stack trace for users.
  process.stderr.write(`vfio-bind: cannot start: ${e && e.message ? e.message : e}\n` +
    '  hint: run `npm install` (it builds the addon) and `npm run build` in the package directory\n');
  process.exitCode = 1;
});
