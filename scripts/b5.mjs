import * as esbuild from 'esbuild-wasm';
import fs from 'node:fs';
const lazy = { name: 'l', setup(b) { b.onLoad({ filter: /[\\/]string-width[\\/]index\.js$/ }, (a) => ({ contents: fs.readFileSync(a.path, 'utf8').replace('const segmenter = new Intl.Segmenter();', 'let s_; const segmenter = { segment: (t) => (s_ ??= new Intl.Segmenter()).segment(t) };'), loader: 'js' })); } };
for (const name of ['yargs', 'string-width', 'cliui', 'yargs-parser', 'y18n', 'yargs/helpers']) {
  await esbuild.build({ stdin: { contents: `import * as m from '${name}'; export default m;`, resolveDir: '.', loader: 'ts' }, bundle: true, platform: 'node', format: 'esm', target: 'node20', outfile: `/tmp/b5/${name.replace('/','_')}.mjs`, plugins: [lazy],
    banner: { js: "import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);" } });
}
