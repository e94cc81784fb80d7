// string-width, loaded only for text that needs it. yargs and cliui import it to lay out help text,
// and yargs lays out (caches) the help on every command, not only for --help. Loading the real one
// builds an Intl.Segmenter and Unicode-property regexps: ~70 ms of every command here, over a second
// in a TCG guest. Printable ASCII, all our own text, is one column per character (string-width's own
// fast path says the same); anything else goes to the real one. scripts/bundle.mjs points their
// imports here, and esbuild turns the require below into an initializer run on first use.
const PRINTABLE_ASCII = /^[\u0020-\u007E]*$/;
let real;
function stringWidth(text, options) {
  if (typeof text === 'string' && PRINTABLE_ASCII.test(text)) return text.length;
  real ??= require('string-width').default;
  return real(text, options);
}
module.exports = stringWidth;
module.exports.default = stringWidth;
