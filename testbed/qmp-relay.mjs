// qmp-relay.mjs RUN_DIR QMP_SOCKET: the test bed's host-side hand on a guest. run-vm.sh starts it beside
// QEMU. A guest test asks the host to act by writing one QMP command (JSON) to
// /vmrun/host-requests/<id>.json (write a .tmp, then rename); this relay sends it over QEMU's QMP
// socket and writes QEMU's answer to <id>.reply.json the same way. Every QMP event is appended to
// RUN_DIR/qmp-events.jsonl (/vmrun/qmp-events.jsonl in the guest). HMP commands go through QMP's
// human-monitor-command. "{RUN}" in a command's strings is RUN_DIR on the host (the guest's /vmrun), so
// that a guest can have QEMU write a file it then reads (HMP logfile, for QEMU's trace). Exits when
// QEMU closes the socket.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

const [runDir, socketPath] = process.argv.slice(2);
if (!runDir || !socketPath) {
  process.stderr.write('usage: qmp-relay.mjs RUN_DIR QMP_SOCKET\n');
  process.exit(2);
}
const requests = path.join(runDir, 'host-requests');
fs.mkdirSync(requests, { recursive: true });
const events = path.join(runDir, 'qmp-events.jsonl');
const log = (line) => fs.appendFileSync(path.join(runDir, 'qmp-relay.log'), `${new Date().toISOString()} ${line}\n`);

function connect(deadline) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    socket.once('connect', () => resolve(socket));
    socket.once('error', (e) => {
      if (Date.now() > deadline) reject(e);
      else setTimeout(() => connect(deadline).then(resolve, reject), 100);
    });
  });
}

const socket = await connect(Date.now() + 60_000).catch((e) => {
  log(`no QMP socket: ${e.message}`);
  process.exit(0);
});
let buffered = '';
const waiting = []; // resolvers for answers, in order: QMP answers commands in the order sent
socket.setEncoding('utf8');
socket.on('data', (chunk) => {
  buffered += chunk;
  for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
    const line = buffered.slice(0, nl).trim();
    buffered = buffered.slice(nl + 1);
    if (!line) continue;
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      log(`not JSON from QEMU: ${line}`);
      continue;
    }
    if (msg.event) fs.appendFileSync(events, `${line}\n`);
    else if (msg.QMP) continue; // the greeting
    else waiting.shift()?.(msg);
  }
});
socket.on('close', () => process.exit(0));

const send = (command) => new Promise((resolve) => {
  waiting.push(resolve);
  socket.write(`${JSON.stringify(command)}\n`);
});

await send({ execute: 'qmp_capabilities' });
log('QMP ready');

const done = new Set();
async function poll() {
  for (const name of fs.readdirSync(requests)) {
    if (!name.endsWith('.json') || name.endsWith('.reply.json') || done.has(name)) continue;
    done.add(name);
    const id = name.slice(0, -'.json'.length);
    let reply;
    try {
      const command = JSON.parse(fs.readFileSync(path.join(requests, name), 'utf8'), (_key, v) => (typeof v === 'string' ? v.replaceAll('{RUN}', runDir) : v));
      log(`request ${id}: ${JSON.stringify(command)}`);
      reply = await send(command);
    } catch (e) {
      reply = { error: { class: 'RelayError', desc: e.message } };
    }
    log(`reply ${id}: ${JSON.stringify(reply)}`);
    const tmp = path.join(requests, `${id}.reply.tmp`);
    fs.writeFileSync(tmp, JSON.stringify(reply));
    fs.renameSync(tmp, path.join(requests, `${id}.reply.json`));
  }
  setTimeout(poll, 50);
}
poll();
