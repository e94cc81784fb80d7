// Logging. The library logs through any pino-compatible logger it is given and is silent otherwise,
// so embedding it costs nothing; the CLI builds a pino logger on stderr (loaded only when asked).
import { createRequire } from 'node:module';

export interface Logger {
  /** pino's: lets hot paths skip building log records nobody will see */
  isLevelEnabled?(level: string): boolean;
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  child(bindings: object): Logger;
}

const noop = (): void => {};
export const silentLogger: Logger = { isLevelEnabled: () => false, debug: noop, info: noop, warn: noop, child: () => silentLogger };

export type LogLevel = 'silent' | 'error' | 'warn' | 'info' | 'debug' | 'trace';

/** A pino logger writing JSON lines to stderr (fd 2), so stdout stays the command's output. */
export async function createStderrLogger(level: LogLevel): Promise<Logger> {
  if (level === 'silent') return silentLogger;
  // require, not import(): the CLI's bundle runs as a vm.Script, where a dynamic import() needs
  // Node's experimental USE_MAIN_CONTEXT_DEFAULT_LOADER, and fails outright once the script comes
  // from its code cache. pino is CommonJS.
  const pino = createRequire(import.meta.url)('pino') as typeof import('pino').default;
  return pino({ level, base: { name: 'vfio-bind' } }, pino.destination({ fd: 2, sync: true })) as unknown as Logger;
}
