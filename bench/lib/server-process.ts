/** `funnel serve` as a child process: start it, wait for its "funnel serving on" line, watch its logs, stop it. */
import { ChildProcess, spawn } from 'node:child_process';
import * as readline from 'node:readline';
import { processStat, processTree } from './proc';

/** What the serving line says: `funnel serving on HOST:PORT (N ads, dim D, seq S; ...)`. */
export interface ServingBanner {
  host: string;
  port: number;
  ads?: number;
  dim?: number;
}

/** Parses the line `funnel serve` prints once it listens; undefined for any other line. */
export function parseServingBanner(line: string): ServingBanner | undefined {
  const m = /^funnel serving on (\[[^\]]+\]|[^\s:]+):(\d+)\b(.*)$/.exec(line.trim());
  if (!m) return undefined;
  const ads = /\((\d+) ads\b/.exec(m[3]);
  const dim = /\bdim (\d+)\b/.exec(m[3]);
  return {
    host: m[1].replace(/^\[|\]$/g, ''),
    port: Number(m[2]),
    ...(ads && { ads: Number(ads[1]) }),
    ...(dim && { dim: Number(dim[1]) }),
  };
}

/** A subcommand of the funnel CLI other than `serve`, and how to read its ready line. */
export interface ServerCommand {
  command: string;
  /** The parsed ready line, or undefined for any other line of its stdout. */
  banner: (line: string) => ServingBanner | undefined;
}

/** Log levels of pino's JSON lines (`"level":40` = warn, 50 = error, 60 = fatal). */
const WARN = 40;

/** What is known of the child while it runs: its stderr's last lines, the warnings it logged, how it exited. */
interface Watch {
  tail: string[];
  problems: Map<string, number>;
  /** Called with every JSON log record (reload() waits on these). */
  listeners: Set<(rec: { level?: number; msg?: string }) => void>;
  exit?: { code: number | null; signal: NodeJS.Signals | null };
}

/** How long stop() waits for a stopped server's descendants to exit by themselves. */
const LEFTOVER_GRACE_MS = 3000;

/** A process identified beyond its pid. */
interface Process {
  pid: number;
  startTicks: number;
}

/** Whether `p` still runs (not exited, not a zombie, pid not reused). */
function alive(p: Process): boolean {
  const st = processStat(p.pid);
  return st !== undefined && st.startTicks === p.startTicks && st.state !== 'Z' && st.state !== 'X';
}

/** SIGKILLs those of `list` still running; returns how many. */
function killAll(list: readonly Process[]): number {
  let n = 0;
  for (const p of list) {
    if (!alive(p)) continue;
    try {
      process.kill(p.pid, 'SIGKILL');
      n++;
    } catch {
      // Gone in between.
    }
  }
  return n;
}

/** A running server child. */
export class ServerProcess {
  private readonly exited: Promise<void>;

  private constructor(
    private readonly child: ChildProcess,
    private readonly watch: Watch,
    /** What the server printed when ready. */
    readonly banner: ServingBanner,
  ) {
    this.exited = new Promise((resolve) => {
      if (watch.exit !== undefined) resolve();
      else child.once('exit', () => resolve());
    });
  }

  /**
   * Spawns `node mainJs serve <args>` and resolves once it prints its serving line; rejects (after
   * killing it) when it exits first or `timeoutMs` passes, with the end of its stderr. `as` runs
   * another subcommand instead (e.g. `root`), ready once `as.banner` parses one of its lines.
   */
  static start(mainJs: string, args: readonly string[], timeoutMs: number, env?: NodeJS.ProcessEnv, as?: ServerCommand): Promise<ServerProcess> {
    const command = as?.command ?? 'serve';
    const parseBanner = as?.banner ?? parseServingBanner;
    const child = spawn(process.execPath, [mainJs, command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
    const watch: Watch = { tail: [], problems: new Map(), listeners: new Set() };
    child.on('exit', (code, signal) => {
      watch.exit = { code, signal };
    });
    readline.createInterface({ input: child.stderr! }).on('line', (line) => {
      watch.tail.push(line);
      if (watch.tail.length > 40) watch.tail.shift();
      try {
        const rec = JSON.parse(line) as { level?: number; msg?: string };
        for (const l of watch.listeners) l(rec);
        if (typeof rec.level === 'number' && rec.level >= WARN) {
          const key = `${rec.level >= 50 ? 'error' : 'warn'}: ${rec.msg ?? line.slice(0, 120)}`;
          watch.problems.set(key, (watch.problems.get(key) ?? 0) + 1);
        }
      } catch {
        // Not a log record (a plain stderr line): kept in the tail only.
      }
    });
    return new Promise<ServerProcess>((resolve, reject) => {
      let settled = false;
      const fail = (why: string): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (watch.exit === undefined) child.kill('SIGKILL');
        // Give the stderr reader a moment to take the last lines of a crash.
        setTimeout(() => reject(new Error(`funnel ${command} ${why}${watch.tail.length ? `; its stderr ended with:\n${watch.tail.join('\n')}` : ''}`)), 100);
      };
      const timer = setTimeout(() => fail(`printed no serving line within ${timeoutMs / 1000}s`), timeoutMs);
      child.once('exit', (code, signal) => fail(`exited (${signal ?? `code ${code}`}) before serving`));
      child.once('error', (err) => fail(`could not start: ${err.message}`));
      readline.createInterface({ input: child.stdout! }).on('line', (line) => {
        if (settled) return;
        const banner = parseBanner(line);
        if (!banner) return;
        settled = true;
        clearTimeout(timer);
        resolve(new ServerProcess(child, watch, banner));
      });
    });
  }

  /** The server's process id. */
  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** Exit code and signal once it has exited; undefined while it runs. */
  get exitStatus(): { code: number | null; signal: NodeJS.Signals | null } | undefined {
    return this.watch.exit;
  }

  /** Warnings and errors the server has logged, as "level: message" with counts. */
  get problems(): ReadonlyMap<string, number> {
    return this.watch.problems;
  }

  /** The last lines of its stderr. */
  get stderrTail(): string[] {
    return [...this.watch.tail];
  }

  /**
   * Calls `write` (which changes the server's --config file), then sends SIGHUP. Resolves once the
   * server logs that the new config serves (its file watcher may get there before the signal);
   * rejects when it refuses the file or says nothing within `timeoutMs`.
   */
  reloadAfter(write: () => void, timeoutMs = 10_000): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        clearTimeout(timer);
        this.watch.listeners.delete(listener);
        if (err) reject(err);
        else resolve();
      };
      const listener = (rec: { msg?: string }) => {
        if (rec.msg === 'config reloaded') done();
        else if (rec.msg?.startsWith('config refused')) done(new Error(`funnel serve refused the config: ${JSON.stringify(rec)}`));
      };
      const timer = setTimeout(() => done(new Error(`funnel serve did not report a reload within ${timeoutMs} ms of SIGHUP`)), timeoutMs);
      this.watch.listeners.add(listener);
      try {
        write();
      } catch (err) {
        done(err as Error);
        return;
      }
      this.child.kill('SIGHUP');
    });
  }

  /**
   * SIGTERM (the server drains), then SIGKILL after `graceMs`; resolves with how it exited.
   * Descendants (a `--workers` primary's workers) still running a few seconds after it exited
   * are killed and counted in `leftovers`.
   */
  async stop(graceMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null; killed: boolean; leftovers: number }> {
    let killed = false;
    const descendants = this.descendants();
    if (this.watch.exit === undefined) {
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => {
        killed = true;
        this.child.kill('SIGKILL');
      }, graceMs);
      await this.exited;
      clearTimeout(timer);
    }
    const e = this.watch.exit ?? { code: this.child.exitCode, signal: this.child.signalCode };
    // A cluster worker whose primary has gone exits on losing its IPC channel: give it a moment.
    const until = Date.now() + LEFTOVER_GRACE_MS;
    while (Date.now() < until && descendants.some(alive)) await new Promise((resolve) => setTimeout(resolve, 100));
    return { ...e, killed, leftovers: killAll(descendants) };
  }

  /** SIGKILL at once, the server and its descendants (synchronous: for process exit handlers). */
  killNow(): void {
    const descendants = this.watch.exit === undefined ? this.descendants() : [];
    if (this.watch.exit === undefined) this.child.kill('SIGKILL');
    killAll(descendants);
  }

  /** The server's descendants now, each with its start time (so that a reused pid is never taken for it). */
  private descendants(): Process[] {
    if (this.watch.exit !== undefined || this.child.pid === undefined) return [];
    return processTree(this.child.pid)
      .slice(1)
      .flatMap((pid) => {
        const st = processStat(pid);
        return st ? [{ pid, startTicks: st.startTicks }] : [];
      });
  }
}
