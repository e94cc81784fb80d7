// string-width, loaded on first use. yargs and cliui import it only to lay out help text, but loading
// it costs ~30 ms of every start-up (it builds an Intl.Segmenter and /v regexps over Unicode property
// sets). scripts/bundle.mjs points their imports here; this module requires the real one lazily, which
// esbuild turns into an initializer that runs on the first call.
let real;
function stringWidth(text, options) {
  real ??= require('string-width').default;
  return real(text, options);
}
module.exports = stringWidth;
module.exports.default = stringWidth;
