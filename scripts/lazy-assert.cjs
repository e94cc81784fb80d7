// The two assertions yargs makes (through its platform shim), checked here with assert's own test
// (Object.is); node:assert is loaded only to throw its usual error when one fails. yargs calls them on
// every run, and loading node:assert costs ~6% of a command's start-up in a TCG guest.
function strictEqual(actual, expected, message) {
  if (!Object.is(actual, expected)) require('assert').strictEqual(actual, expected, message);
}
function notStrictEqual(actual, expected, message) {
  if (Object.is(actual, expected)) require('assert').notStrictEqual(actual, expected, message);
}
module.exports = { strictEqual, notStrictEqual };
