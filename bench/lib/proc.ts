/** Memory and CPU time of another process from Linux's /proc (undefined elsewhere or once it has exited). */
import * as fs from 'node:fs';

/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on every mainstream Linux). */
const USER_HZ = 100;

/** A `kB` field of /proc/<pid>/status (e.g. `VmRSS`) in bytes; undefined when absent. */
export function parseStatusKb(statusText: string, field: string): number | undefined {
  const m = new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, 'm').exec(statusText);
  return m ? Number(m[1]) * 1024 : undefined;
}

/** User plus system CPU seconds of all threads from a /proc/<pid>/stat line; undefined when malformed. */
export function parseStatCpuSeconds(statText: string): number | undefined {
  // The command name (field 2) is in parentheses and may hold spaces and ')': fields restart after the last ')'.
  const close = statText.lastIndexOf(')');
  if (close < 0) return undefined;
  const rest = statText.slice(close + 2).trim().split(/\s+/);
  // rest[0] is field 3 (state): utime and stime are fields 14 and 15.
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return undefined;
  return (utime + stime) / USER_HZ;
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

/** CPU seconds `pid` has used so far (user plus system, all threads). */
export function processCpuSeconds(pid: number): number | undefined {
  const text = readProc(pid, 'stat');
  return text === undefined ? undefined : parseStatCpuSeconds(text);
}
