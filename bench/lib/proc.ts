/**
 * Memory and CPU time of other processes from Linux's /proc (undefined or empty elsewhere or once
 * they have exited): one process, or a process tree (a `funnel serve --workers N` primary and the
 * workers it forks), with each process's main thread (the JavaScript thread of a Node process)
 * read apart from its other threads.
 */
import * as fs from 'node:fs';

/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on every mainstream Linux). */
const USER_HZ = 100;

/** A `kB` field of /proc/<pid>/status (e.g. `VmRSS`) in bytes; undefined when absent. */
export function parseStatusKb(statusText: string, field: string): number | undefined {
  const m = new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, 'm').exec(statusText);
  return m ? Number(m[1]) * 1024 : undefined;
}

/** What bench:e2e reads of a /proc/<pid>/stat (or /proc/<pid>/task/<tid>/stat) line. */
export interface StatFields {
  /** State letter (field 3): R, S, D, ...; Z for a zombie (exited, not yet reaped). */
  state: string;
  /** Parent process id (field 4). */
  ppid: number;
  /** User plus system CPU seconds (fields 14 and 15): all threads for a process, one for a task. */
  cpuSeconds: number;
  /** Start time in clock ticks after boot (field 22): orders processes by when they started. */
  startTicks: number;
}

/** Parses a stat line; undefined when malformed. */
export function parseStat(statText: string): StatFields | undefined {
  // The command name (field 2) is in parentheses and may hold spaces and ')': fields restart after the last ')'.
  const close = statText.lastIndexOf(')');
  if (close < 0) return undefined;
  const rest = statText.slice(close + 2).trim().split(/\s+/);
  // rest[0] is field 3 (state), so field f is rest[f - 3].
  const ppid = Number(rest[1]);
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  const start = Number(rest[19]);
  if (![ppid, utime, stime].every(Number.isFinite)) return undefined;
  return { state: rest[0], ppid, cpuSeconds: (utime + stime) / USER_HZ, startTicks: Number.isFinite(start) ? start : 0 };
}

/** User plus system CPU seconds of all threads from a /proc/<pid>/stat line; undefined when malformed. */
export function parseStatCpuSeconds(statText: string): number | undefined {
  return parseStat(statText)?.cpuSeconds;
}

/** Process ids of a /proc/<pid>/task/<tid>/children file (space-separated, possibly empty). */
export function parseChildrenList(text: string): number[] {
  return text
    .split(/\s+/)
    .filter((s) => /^\d+$/.test(s))
    .map(Number);
}

/** Sizes from /proc/<pid>/smaps_rollup, bytes. */
export interface SmapsRollup {
  rss: number;
  /** Proportional set size: pages shared with N processes count 1/N. */
  pss: number;
  /** Private_Clean + Private_Dirty: pages mapped by this process only. */
  privateBytes: number;
  /** Shared_Clean + Shared_Dirty. */
  sharedBytes: number;
}

/** Parses a smaps_rollup text; undefined when Rss or Pss is missing. */
export function parseSmapsRollup(text: string): SmapsRollup | undefined {
  const kb = (field: string): number | undefined => parseStatusKb(text, field);
  const rss = kb('Rss');
  const pss = kb('Pss');
  if (rss === undefined || pss === undefined) return undefined;
  return {
    rss,
    pss,
    privateBytes: (kb('Private_Clean') ?? 0) + (kb('Private_Dirty') ?? 0),
    sharedBytes: (kb('Shared_Clean') ?? 0) + (kb('Shared_Dirty') ?? 0),
  };
}

function readProc(pid: number, file: string): string | undefined {
  try {
    return fs.readFileSync(`/proc/${pid}/${file}`, 'utf8');
  } catch {
    return undefined;
  }
}

/** Resident and peak resident memory of `pid`, bytes. */
export function processMemory(pid: number): { rss?: number; peakRss?: number } {
  const text = readProc(pid, 'status');
  if (text === undefined) return {};
  return { rss: parseStatusKb(text, 'VmRSS'), peakRss: parseStatusKb(text, 'VmHWM') };
}

/** RSS, PSS and private memory of `pid` from its smaps_rollup (Linux 4.14+). */
export function processSmaps(pid: number): SmapsRollup | undefined {
  const text = readProc(pid, 'smaps_rollup');
  return text === undefined ? undefined : parseSmapsRollup(text);
}

/** CPU seconds `pid` has used so far (user plus system, all threads). */
export function processCpuSeconds(pid: number): number | undefined {
  const text = readProc(pid, 'stat');
  return text === undefined ? undefined : parseStatCpuSeconds(text);
}

/** Parsed /proc/<pid>/stat of `pid`; undefined once it has exited. */
export function processStat(pid: number): StatFields | undefined {
  const text = readProc(pid, 'stat');
  return text === undefined ? undefined : parseStat(text);
}

/** Whether this kernel lists children in /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN). */
let childrenFiles: boolean | undefined;

/**
 * Direct children of `pid`, ascending: from /proc/<pid>/task/<tid>/children of each of its
 * threads when the kernel has those files (unless `scan`), else by scanning every
 * /proc/<n>/stat for ppid `pid`.
 */
export function childPids(pid: number, scan = false): number[] {
  childrenFiles ??= fs.existsSync(`/proc/${process.pid}/task/${process.pid}/children`);
  const found = new Set<number>();
  if (childrenFiles && !scan) {
    let tids: string[];
    try {
      tids = fs.readdirSync(`/proc/${pid}/task`);
    } catch {
      return [];
    }
    for (const tid of tids) {
      const text = readProc(pid, `task/${tid}/children`);
      if (text !== undefined) for (const c of parseChildrenList(text)) found.add(c);
    }
  } else {
    let entries: string[];
    try {
      entries = fs.readdirSync('/proc');
    } catch {
      return [];
    }
    for (const name of entries) {
      if (!/^\d+$/.test(name)) continue;
      if (processStat(Number(name))?.ppid === pid) found.add(Number(name));
    }
  }
  return [...found].sort((a, b) => a - b);
}

/** `pid` and every descendant, each parent before its children. */
export function processTree(pid: number): number[] {
  const out: number[] = [];
  const queue = [pid];
  const seen = new Set<number>();
  while (queue.length > 0) {
    const p = queue.shift()!;
    if (seen.has(p)) continue;
    seen.add(p);
    out.push(p);
    queue.push(...childPids(p));
  }
  return out;
}

/** CPU seconds of one process so far: all its threads, and its main thread alone. */
export interface ProcessCpu {
  allSeconds: number;
  /** The thread whose id is the pid: a Node process's JavaScript (event loop) thread. */
  mainThreadSeconds: number;
}

/** CPU of `pid` and each of its descendants, by pid (processes that exit while being read are left out). */
export function treeCpu(pid: number): Map<number, ProcessCpu> {
  const out = new Map<number, ProcessCpu>();
  for (const p of processTree(pid)) {
    const all = processCpuSeconds(p);
    const main = readProc(p, `task/${p}/stat`);
    const mainSeconds = main === undefined ? undefined : parseStatCpuSeconds(main);
    if (all !== undefined && mainSeconds !== undefined) out.set(p, { allSeconds: all, mainThreadSeconds: mainSeconds });
  }
  return out;
}

/**
 * CPU used between two {@link treeCpu} readings, by pid: a process only in `end` started in
 * between and counts from zero; one only in `start` exited and its share is lost (not counted).
 */
export function cpuDelta(start: ReadonlyMap<number, ProcessCpu>, end: ReadonlyMap<number, ProcessCpu>): Map<number, ProcessCpu> {
  const out = new Map<number, ProcessCpu>();
  for (const [pid, e] of end) {
    const s = start.get(pid) ?? { allSeconds: 0, mainThreadSeconds: 0 };
    out.set(pid, { allSeconds: e.allSeconds - s.allSeconds, mainThreadSeconds: e.mainThreadSeconds - s.mainThreadSeconds });
  }
  return out;
}

/**
 * A process tree's CPU (a {@link cpuDelta}) split as bench:e2e reports it: all threads of every
 * process; the main (JavaScript) threads of the serving processes; and each serving process's
 * total, in pid order. The serving processes are every process but `primary` when `cluster` is
 * set (a node:cluster primary hands out connections and serves none), else `primary` alone.
 */
export function splitTreeCpu(
  delta: ReadonlyMap<number, ProcessCpu>,
  primary: number,
  cluster: boolean,
): { allSeconds: number; jsSeconds: number; perServing: number[] } {
  let allSeconds = 0;
  let jsSeconds = 0;
  const perServing: number[] = [];
  for (const [pid, c] of [...delta].sort((a, b) => a[0] - b[0])) {
    allSeconds += c.allSeconds;
    if (cluster ? pid === primary : pid !== primary) continue;
    jsSeconds += c.mainThreadSeconds;
    perServing.push(c.allSeconds);
  }
  return { allSeconds, jsSeconds, perServing };
}

/** Resident memory summed over `pid` and its descendants, and the sum of their peaks (VmHWM), bytes. */
export function treeMemory(pid: number): { rss?: number; peakRss?: number; processes: number } {
  let rss: number | undefined;
  let peakRss: number | undefined;
  let processes = 0;
  for (const p of processTree(pid)) {
    const m = processMemory(p);
    if (m.rss === undefined) continue;
    processes++;
    rss = (rss ?? 0) + m.rss;
    peakRss = (peakRss ?? 0) + (m.peakRss ?? m.rss);
  }
  return { rss, peakRss, processes };
}
