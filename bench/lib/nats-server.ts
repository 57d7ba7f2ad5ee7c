/**
 * A `nats-server -js` child process for bench:cluster: on loopback, on a port it picks itself
 * (`-p -1`, read back from its log, so no other process can take the port in between), its
 * JetStream store in a directory of the caller's; stopped with SIGINT (nats-server 2.9 shuts down
 * cleanly and exits 0 on SIGINT, but exits 1 on SIGTERM), or SIGKILL at once.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';

/** Where nats-server is looked for after $PATH (the Debian package installs it in /usr/sbin). */
const EXTRA_DIRS = ['/usr/sbin', '/usr/local/sbin', '/usr/local/bin', '/sbin'];

/** The nats-server binary: `env` (NATS_SERVER) when set, else the first on $PATH or in the usual sbin directories; undefined when none. */
export function findNatsServer(env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (env.NATS_SERVER) return env.NATS_SERVER;
  const dirs = [...(env.PATH ?? '').split(path.delimiter).filter((d) => d !== ''), ...EXTRA_DIRS];
  for (const dir of dirs) {
    const file = path.join(dir, 'nats-server');
    try {
      fs.accessSync(file, fs.constants.X_OK);
      return file;
    } catch {
      // Not here.
    }
  }
  return undefined;
}

/** The client port of nats-server's `Listening for client connections on HOST:PORT` log line; undefined for any other line. */
export function parseNatsListening(line: string): number | undefined {
  const m = /Listening for client connections on (?:\[[^\]]+\]|[^\s:]+):(\d+)\s*$/.exec(line);
  return m ? Number(m[1]) : undefined;
}

/** A running nats-server. */
export class NatsServer {
  private exitStatus: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private readonly exited: Promise<void>;

  private constructor(
    private readonly child: ChildProcess,
    /** Client port on 127.0.0.1. */
    readonly port: number,
    private readonly tail: string[],
  ) {
    this.exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve();
      else child.once('exit', () => resolve());
    });
    child.once('exit', (code, signal) => {
      this.exitStatus = { code, signal };
    });
  }

  /**
   * Starts `binary -js -a 127.0.0.1 -p -1 -sd storeDir` and resolves once it says it is ready;
   * rejects (after killing it) when it exits first or `timeoutMs` passes, with its last log lines.
   */
  static start(binary: string, storeDir: string, timeoutMs = 30_000): Promise<NatsServer> {
    const child = spawn(binary, ['-js', '-a', '127.0.0.1', '-p', '-1', '-sd', storeDir], { stdio: ['ignore', 'pipe', 'pipe'] });
    const tail: string[] = [];
    let port: number | undefined;
    return new Promise<NatsServer>((resolve, reject) => {
      let settled = false;
      const fail = (why: string): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        setTimeout(() => reject(new Error(`nats-server ${why}${tail.length ? `; its log ended with:\n${tail.join('\n')}` : ''}`)), 100);
      };
      const timer = setTimeout(() => fail(`was not ready within ${timeoutMs / 1000}s`), timeoutMs);
      child.once('exit', (code, signal) => fail(`exited (${signal ?? `code ${code}`}) before it was ready`));
      child.once('error', (err) => fail(`could not start (${binary}): ${err.message}`));
      const onLine = (line: string): void => {
        tail.push(line);
        if (tail.length > 30) tail.shift();
        port ??= parseNatsListening(line);
        if (settled || !/\bServer is ready\b/.test(line)) return;
        if (port === undefined) return fail('said it was ready without saying its client port');
        settled = true;
        clearTimeout(timer);
        resolve(new NatsServer(child, port, tail));
      };
      // It logs to stderr; stdout is read too in case a build logs there.
      readline.createInterface({ input: child.stderr! }).on('line', onLine);
      readline.createInterface({ input: child.stdout! }).on('line', onLine);
    });
  }

  /** `nats://127.0.0.1:PORT`. */
  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  /** Its process id. */
  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** Exit code and signal once it has exited; undefined while it runs. */
  get exit(): { code: number | null; signal: NodeJS.Signals | null } | undefined {
    return this.exitStatus;
  }

  /** Its last log lines. */
  get logTail(): string[] {
    return [...this.tail];
  }

  /** SIGINT, then SIGKILL after `graceMs`; resolves once it has exited, saying whether it had to be killed. */
  async stop(graceMs = 5000): Promise<{ killed: boolean }> {
    if (this.exitStatus !== undefined) return { killed: false };
    let killed = false;
    this.child.kill('SIGINT');
    const timer = setTimeout(() => {
      killed = true;
      this.child.kill('SIGKILL');
    }, graceMs);
    await this.exited;
    clearTimeout(timer);
    return { killed };
  }

  /** SIGKILL at once (synchronous: for process exit handlers). */
  killNow(): void {
    if (this.exitStatus === undefined && this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}
