// Bundles the CLI into dist/cli/ (one file plus lazily loaded chunks such as pino's): loading
// yargs from node_modules file by file costs more than the rest of a command's start-up, and in a
// test-bed guest (9p root, TCG) several seconds.
import fs from 'node:fs';
import * as esbuild from 'esbuild-wasm';

fs.rmSync('dist/cli', { recursive: true, force: true }); // no stale chunks

// string-width (under yargs' help layout) builds an Intl.Segmenter when it is imported, which loads
// ICU's segmentation data: ~50 ms of every start-up, for help text most commands never print. The
// patch builds it on first use instead; everything else in the module is unchanged.
const EAGER_SEGMENTER = 'const segmenter = new Intl.Segmenter();';
const LAZY_SEGMENTER = 'let lazySegmenter; const segmenter = { segment: (text) => (lazySegmenter ??= new Intl.Segmenter()).segment(text) };';
const lazySegmenter = {
  name: 'lazy-intl-segmenter',
  setup(build) {
    build.onLoad({ filter: /[\\/]string-width[\\/]index\.js$/ }, (args) => {
      const source = fs.readFileSync(args.path, 'utf8');
      if (!source.includes(EAGER_SEGMENTER)) {
        throw new Error(`${args.path} no longer has "${EAGER_SEGMENTER}": review the lazy-intl-segmenter patch in scripts/bundle.mjs`);
      }
      return { contents: source.replace(EAGER_SEGMENTER, LAZY_SEGMENTER), loader: 'js' };
    });
  },
};

await esbuild.build({
  entryPoints: { main: 'src/cli/main.ts' },
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  // Node 20 has RegExp's v flag, which esbuild's table misses: lowered to new RegExp(..., 'v'), string-width's
  // \p{RGI_Emoji} pattern costs ~40 ms at start-up, where the literal is compiled on first use.
  supported: { 'regexp-set-notation': true },
  outdir: 'dist/cli',
  splitting: true,
  minify: true, // less to parse at every start
  sourcemap: true,
  logLevel: 'warning',
  plugins: [lazySegmenter],
  // CommonJS dependencies (pino) call require(); give the ESM bundle one.
  banner: { js: "import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);" },
});
