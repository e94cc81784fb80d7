// The real CLI (bin/vfio-bind.js running the dist/cli bundle that `npm run build` makes) on this host,
// which has no VFIO: bad specs and bad options end with the README's exit code, one message with a hint
// on stderr and never a stack trace; --json prints exactly one JSON document; list says why there is no
// VFIO device; --version prints the package's version; -h and completion.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '../../..');
const BIN = path.join(ROOT, 'bin/vfio-bind.js');
const BUNDLE = path.join(ROOT, 'dist/cli/main.cjs');
const built = fs.existsSync(BUNDLE);
const skip = built ? false : 'the CLI bundle is missing: run `npm run build` first';
/** no VFIO here: the host this suite was written for */
const hostHasVfio = fs.existsSync('/dev/vfio');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI (several at once: each run is a process start, most of a test's time). */
function cli(args: string[], options: { cwd?: string } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' }, timeout: 30_000, ...options });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/** "    at foo (file:1:2)": a stack trace line */
const STACK = /^\s+at /m;

/** The README's exit-code table, code -> meaning. */
function readmeExitCodes(): Map<number, string> {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const section = /### Exit codes\n\n([\s\S]*?)\n\n/.exec(readme);
  assert.ok(section, 'README.md has an "Exit codes" section');
  const rows = section[1]!.split('\n').slice(2).map((l) => l.split('|').slice(1, -1).map((c) => c.trim()));
  return new Map(rows.map(([code, meaning]) => [Number(code), meaning!]));
}

/** what each error kind's exit code means in the README */
const KIND_MEANING: Record<string, RegExp> = {
  usage: /usage/, 'bad-fd': /usage/, 'not-found': /not found/, 'not-vfio': /not bound to a VFIO driver/, 'group-not-viable': /not viable/,
  busy: /busy/, permission: /permission denied/, 'no-route': /no usable route/, 'kernel-refused': /kernel refused/, unsupported: /kernel refused/,
  closed: /internal/, internal: /internal/, 'addon-missing': /native addon/, released: /asked for the device back/,
  'stream-refused': /stream refused/, 'migration-refused': /kernel refused/,
};

interface Case {
  args: string[];
  exit: number;
  /** the message (stderr, or the JSON's message) */
  message: RegExp;
  /** the hint line: "  hint: ..." (a VfioError's) or the --help pointer (yargs' errors) */
  hint?: RegExp | false;
  todo?: string;
}

const HELP = /hint: vfio-bind --help shows the commands and options/;
const SPEC_HINT = /hint: name a device as a PCI address/;
const NOT_THERE = 'ffff:ff:1f.7'; // a PCI address no host has

const CASES: Case[] = [
  // bad specs
  { args: ['bind', 'zz:10.0'], exit: 2, message: /invalid device "zz:10\.0": not a PCI address/, hint: SPEC_HINT },
  { args: ['bind', '00:20.0'], exit: 2, message: /device number 0x20 is out of range/, hint: SPEC_HINT },
  { args: ['bind', '00:10.8'], exit: 2, message: /not a PCI address of the form \[DDDD:\]BB:DD\.F/, hint: SPEC_HINT },
  { args: ['bind', '0000:00:10.0\n'], exit: 2, message: /invalid device "0000:00:10\.0\\x0a": it contains control characters/, hint: SPEC_HINT },
  { args: ['bind', '\x1b[2J\x1b[H00:10.0'], exit: 2, message: /invalid device "\\x1b\[2J\\x1b\[H00:10\.0"/, hint: SPEC_HINT },
  { args: ['bind', 'a'.repeat(5000)], exit: 2, message: /longer than 256 characters/, hint: SPEC_HINT },
  { args: ['info', '/sys/bus/pci/devices/../../../etc'], exit: 2, message: /the path has "\." or "\.\." components/, hint: SPEC_HINT },
  { args: ['info', '/dev/vfio/3'], exit: 2, message: /the only device nodes accepted are \/dev\/vfio\/devices\/vfioN/, hint: SPEC_HINT },
  { args: ['driver', 'zz', '--to', 'vfio-pci'], exit: 2, message: /invalid device "zz"/, hint: SPEC_HINT },
  { args: ['driver', 'zz', '--restore'], exit: 2, message: /invalid device "zz"/, hint: SPEC_HINT },
  // devices that are not there
  { args: ['bind', NOT_THERE], exit: 3, message: /no device ffff:ff:1f\.7: \/sys\/bus\/pci\/devices\/ffff:ff:1f\.7 does not exist/, hint: /hint: check the address with `lspci -D`/ },
  { args: ['info', '/dev/vfio/devices/vfio9'], exit: 3, message: /no device \/dev\/vfio\/devices\/vfio9/, hint: /hint: list the VFIO devices with `vfio-bind list`/ },
  { args: ['bind', '83b8f4f2-509f-382f-3c1e-e6bfe0fa1099'], exit: 3, message: /no device 83b8f4f2/, hint: /hint: / },
  // bad command lines
  { args: [], exit: 2, message: /name a command: list, bind, info, driver, doctor, migrate, smoke or completion/, hint: HELP },
  // migrate: what is refused before any device is touched
  { args: ['migrate'], exit: 2, message: /name a migrate command: save, load or state/, hint: HELP },
  { args: ['migrate', 'save', NOT_THERE, '--after', 'PRE_COPY', '--to', '/dev/null'], exit: 2, message: /Argument: after, Given: "PRE_COPY", Choices: "STOP", "RUNNING"/, hint: HELP },
  { args: ['migrate', 'load', NOT_THERE, '--from', '/nonexistent/state.bin'], exit: 2, message: /cannot read \/nonexistent\/state\.bin: ENOENT/ },
  { args: ['migrate', 'state', NOT_THERE, '--set', 'STOP_COPY'], exit: 2, message: /--set STOP_COPY: one of RUNNING, STOP, RUNNING_P2P/, hint: /hint: the states with a data stream are reached by migrate save and migrate load/ },
  { args: ['migrate', 'state', NOT_THERE, '--set', 'STOP', '--recover'], exit: 2, message: /--set and --recover exclude each other/ },
  { args: ['migrate', 'save', NOT_THERE, '--to', '/tmp/vfio-bind-never-written.bin'], exit: 3, message: /no device ffff:ff:1f\.7/ },
  { args: ['frobnicate'], exit: 2, message: /Unknown argument: frobnicate/, hint: HELP },
  { args: ['driver', NOT_THERE], exit: 2, message: /say where the device goes: --to vfio-pci, or --restore/, hint: /hint: vfio-bind driver <device> --to vfio-pci/ },
  { args: ['driver', NOT_THERE, '--to', 'vfio-pci', '--restore'], exit: 2, message: /--to and --restore exclude each other/, hint: /hint: vfio-bind driver <device> --to vfio-pci/ },
  {
    args: ['bind'], exit: 2, message: /Not enough non-option arguments: got 0, need at least 1/, hint: HELP,
  },
  {
    args: ['bind', NOT_THERE, '--route', 'foo'], exit: 2, message: /Argument: route, Given: "foo", Choices: "auto", "iommufd", "legacy"/, hint: HELP,
  },
  {
    args: ['bind', NOT_THERE, '--bogus'], exit: 2, message: /Unknown argument: bogus/, hint: HELP,
  },
  {
    args: ['driver', NOT_THERE, '--to', 'e1000e'], exit: 2, message: /Argument: to, Given: "e1000e", Choices: "vfio-pci"/, hint: HELP,
  },
  {
    args: ['list', '--log-level', 'loud'], exit: 2, message: /Argument: log-level, Given: "loud"/, hint: HELP,
  },
  {
    args: ['bind', NOT_THERE, '--route'], exit: 2, message: /route/, hint: HELP,
  },
  {
    args: ['bind', NOT_THERE, '--device-fd', 'abc'], exit: 2, message: /--device-fd needs a file descriptor number/, hint: /hint: e\.g\. --device-fd 3/,
  },
];

describe('CLI: errors on this host', { skip, concurrency: 8 }, () => {
  const codes = built ? readmeExitCodes() : new Map<number, string>();

  test('the README documents exit codes 0 to 10', () => {
    assert.deepEqual([...codes.keys()], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  });

  for (const c of CASES) {
    const label = JSON.stringify(c.args).slice(0, 120);
    test(`${label}: exit ${c.exit}, one message with a hint, no stack trace`, c.todo ? { todo: c.todo } : {}, async () => {
      const r = await cli(c.args);
      assert.doesNotMatch(r.stderr + r.stdout, STACK, 'a stack trace was printed');
      assert.equal(r.status, c.exit, `exit status (stderr: ${r.stderr})`);
      assert.ok(codes.has(c.exit), `exit ${c.exit} is in the README table`);
      assert.equal(r.stdout, '', 'errors go to stderr only');
      assert.match(r.stderr, c.message);
      const messages = r.stderr.split('\n').filter((l) => l.startsWith('vfio-bind:'));
      assert.equal(messages.length, 1, `exactly one message, got:\n${r.stderr}`);
      assert.ok(r.stderr.startsWith('vfio-bind: '), 'the message comes first');
      if (c.hint) assert.match(r.stderr, c.hint);
      assert.doesNotMatch(r.stderr, /[\u0000-\u0008\u000b-\u001f\u007f]/, 'no raw control characters on the terminal');
    });

    test(`${label} --json: exactly one JSON document on stdout, with the error`, c.todo ? { todo: c.todo } : {}, async () => {
      const r = await cli([...c.args, '--json']);
      assert.doesNotMatch(r.stderr + r.stdout, STACK, 'a stack trace was printed');
      let doc: Record<string, unknown>;
      try {
        doc = JSON.parse(r.stdout) as Record<string, unknown>;
      } catch (e) {
        assert.fail(`stdout is not one JSON document (${(e as Error).message}):\n${r.stdout}`);
      }
      assert.equal(r.status, c.exit);
      assert.equal(doc.exit_code, c.exit);
      assert.equal(typeof doc.error, 'string');
      assert.match(String(doc.message), c.message);
      assert.match(codes.get(c.exit) ?? '', KIND_MEANING[String(doc.error)] ?? /^$/, `the README's meaning of ${c.exit} fits the kind ${String(doc.error)}`);
      for (const k of ['error', 'message', 'errno', 'route', 'step', 'path', 'hint', 'attempts', 'exit_code']) assert.ok(k in doc, `the document has ${k}`);
      assert.equal(r.stderr, '', 'nothing on stderr with --json');
    });
  }

  test('migrate save --json to stdout is refused (the summary would go where the state goes), before the device is opened', async () => {
    const r = await cli(['migrate', 'save', NOT_THERE, '--json']);
    assert.equal(r.status, 2, r.stderr);
    const doc = JSON.parse(r.stdout) as { error: string; message: string };
    assert.equal(doc.error, 'usage');
    assert.match(doc.message, /--json prints its summary on stdout, where the state would go: give --to FILE/);
  });

  test('smoke with a bad spec: a FAIL line with the reason and the hint, exit 2; --json: one document with the results', async () => {
    const r = await cli(['smoke', 'zz']);
    assert.equal(r.status, 2);
    assert.match(r.stdout, /^FAIL zz usage: invalid device "zz": .* \(hint: name a device as a PCI address/m);
    assert.doesNotMatch(r.stdout + r.stderr, STACK);
    const j = await cli(['smoke', 'zz', NOT_THERE, '--json']);
    assert.equal(j.status, 2, 'the first failure\'s exit code');
    const doc = JSON.parse(j.stdout) as { results: { device: string; ok: boolean; error: { kind: string; exit_code: number } }[] };
    assert.deepEqual(doc.results.map((x) => [x.device, x.ok, x.error.kind, x.error.exit_code]), [['zz', false, 'usage', 2], [NOT_THERE, false, 'not-found', 3]]);
  });

  test('doctor with a bad spec: exit 2 (usage), as the README table says for a bad device spec', {
  }, async () => {
    const r = await cli(['doctor', 'zz', '--json']);
    const doc = JSON.parse(r.stdout) as { exit_code: number; checks: { id: string; status: string }[] };
    assert.ok(doc.checks.some((c) => c.id === 'device' && c.status === 'fail'));
    assert.equal(r.status, 2);
  });

  test('doctor never prints a stack trace and exits with its report\'s code', async () => {
    const r = await cli(['doctor', '--json']);
    assert.doesNotMatch(r.stdout + r.stderr, STACK);
    const doc = JSON.parse(r.stdout) as { exit_code: number; verdict: string };
    assert.equal(r.status, doc.exit_code);
    assert.ok(codes.has(doc.exit_code));
  });
});

describe('CLI: list, --version, --help', { skip, concurrency: true }, () => {
  test('list exits 0 and says why there is no VFIO device', async () => {
    const r = await cli(['list']);
    assert.equal(r.status, 0, r.stderr);
    assert.doesNotMatch(r.stdout + r.stderr, STACK);
    if (!hostHasVfio) assert.match(r.stdout, /^No VFIO devices: .+\.$/m);
    const j = await cli(['list', '--json']);
    assert.equal(j.status, 0);
    const doc = JSON.parse(j.stdout) as { devices: unknown[]; none_because?: string };
    assert.ok(Array.isArray(doc.devices));
    if (!hostHasVfio) {
      assert.deepEqual(doc.devices, []);
      assert.equal(typeof doc.none_because, 'string');
      assert.ok(r.stdout.includes(doc.none_because!), 'the same reason as the human output');
    }
  });

  test('--version prints the package version, whatever project it is run from', async () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const r = await cli(['--version']);
    assert.equal(r.status, 0);
    assert.equal(r.stdout.trim(), pkg.version);
    assert.equal(r.stderr, '');
    // a consumer's project with its own package.json as the cwd (yargs' default reads that one)
    const project = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-bind-consumer-'));
    try {
      fs.writeFileSync(path.join(project, 'package.json'), '{ "name": "consumer", "version": "9.9.9" }\n');
      const there = await cli(['--version'], { cwd: project });
      assert.equal(there.stdout.trim(), pkg.version);
    } finally {
      fs.rmSync(project, { recursive: true, force: true });
    }
  });

  test('a package with no addon for this platform: exit 8, the platform and the build command, no stack trace', async () => {
    const copy = fs.mkdtempSync(path.join(os.tmpdir(), 'vfio-bind-noaddon-'));
    try {
      for (const p of ['package.json', 'bin', 'dist/cli/main.cjs']) fs.cpSync(path.join(ROOT, p), path.join(copy, p), { recursive: true });
      const bin = path.join(copy, 'bin/vfio-bind.js');
      const r = spawnSync(process.execPath, [bin, 'list'], { encoding: 'utf8' });
      assert.equal(r.status, 8, r.stderr);
      assert.doesNotMatch(r.stderr, STACK);
      assert.match(r.stderr, new RegExp(`^vfio-bind: vfio-bind has no native addon for linux-${process.arch}-glibc`));
      assert.match(r.stderr, /hint: build one from source .*npm explore vfio-bind -- npm run build:addon/);
      const j = spawnSync(process.execPath, [bin, 'list', '--json'], { encoding: 'utf8' });
      const doc = JSON.parse(j.stdout) as { error: string; exit_code: number };
      assert.deepEqual([j.status, doc.error, doc.exit_code], [8, 'addon-missing', 8]);
    } finally {
      fs.rmSync(copy, { recursive: true, force: true });
    }
  });

  test('-h is --help', async () => {
    const [h, help] = await Promise.all([cli(['-h']), cli(['--help'])]);
    assert.equal(h.status, 0);
    assert.equal(h.stdout, help.stdout);
    assert.match(h.stdout, /bind <device>/);
  });

  test('completion prints a shell script, and the script\'s query lists commands and options', async () => {
    const script = await cli(['completion']);
    assert.equal(script.status, 0);
    assert.match(script.stdout, /complete -o bashdefault -o default -F _vfio-bind_yargs_completions vfio-bind/);
    assert.match(script.stdout, /vfio-bind --get-yargs-completions/);
    const commands = await cli(['--get-yargs-completions', 'vfio-bind', '']);
    assert.deepEqual(commands.stdout.trim().split('\n').slice(0, 8), ['list', 'bind', 'info', 'driver', 'doctor', 'migrate', 'smoke', 'completion']);
    const options = await cli(['--get-yargs-completions', 'vfio-bind', 'bind', '--']);
    assert.match(options.stdout, /^--route$/m);
    assert.match(options.stdout, /^--hold$/m);
  });

  test('--help lists the commands and the exit codes', async () => {
    const r = await cli(['--help']);
    assert.equal(r.status, 0);
    for (const cmd of ['list', 'bind <device>', 'info <device>', 'driver <device>', 'doctor [device]', 'migrate', 'smoke <devices..>', 'completion']) assert.ok(r.stdout.includes(cmd), cmd);
    assert.match(r.stdout.replace(/\s+/g, ' '), /Exit codes: 0 ok, 1 internal error, 2 usage, 3 device not found or not VFIO's, 4 busy, 5 permission denied, 6 no usable route, 7 kernel refused, 8 no native addon for this platform, 9 released at the host's request, 10 the device refused a migration stream/);
  });
});
