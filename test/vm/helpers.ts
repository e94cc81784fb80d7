// Shared by the tests that run inside a test-bed guest (testbed/matrix.sh runs dist/test/vm/all.js).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export const ROOT = path.resolve(import.meta.dirname, '../../..');
export const CLI = path.join(ROOT, 'bin/vfio-bind.js');
/** the case this guest was booted for (testbed/matrix.sh sets it) */
export const CASE = process.env.VM_CASE ?? '';
export const EDU = '0000:00:10.0';
export const TESTDEV = '0000:00:11.0';

export const isStock = CASE.startsWith('stock-');
export const inGuest = CASE !== '' && fs.existsSync('/vmrun');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], env: NodeJS.ProcessEnv = {}): CliResult {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

export function json<T = Record<string, unknown>>(r: CliResult): T {
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`not one JSON document on stdout (exit ${r.code}):\n${r.stdout}\nstderr:\n${r.stderr}`);
  }
}

/** A second process that binds a device and holds it until stopped. */
export interface Holder {
  report: Record<string, unknown>;
  stop(): Promise<number | null>;
}

export function holdDevice(device: string, route: string): Promise<Holder> {
  const child = spawn(process.execPath, [CLI, 'bind', device, '--route', route, '--json', '--hold'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    // Bound when both have arrived, in either order: the report (one JSON object) on stdout and
    // --hold's notice on stderr.
    const check = (): void => {
      if (stdout.trimEnd().endsWith('}') && stderr.includes('holding')) {
        resolve({
          report: JSON.parse(stdout) as Record<string, unknown>,
          stop: () => {
            child.kill('SIGTERM');
            return exited;
          },
        });
      }
    };
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      check();
    });
    child.stderr.on('data', check);
    void exited.then((code) => reject(new Error(`holder exited (${code}) before binding:\n${stdout}\n${stderr}`)));
  });
}
