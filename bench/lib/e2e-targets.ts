/**
 * The throughput issue's targets for bench:e2e and their verdicts, from measured figures: CPU per
 * Retrieve, goodput and p99 under overload, refusals by status code, and the memory of each
 * extra `funnel serve --workers` process. Pure arithmetic: bench/e2e.ts measures and prints.
 */
import { fixed, grouped } from './table';

/** Overload: goodput at each multiple above 1 over the measured maximum, at least. */
export const TARGET_GOODPUT_SHARE = 0.9;
/** Overload: p99 of OK answers over the p99 at half load, at most. */
export const TARGET_P99_GROWTH = 2;
/** Overload: share of the calls not answered OK that are RESOURCE_EXHAUSTED, at least (the issue says "the excess"; 1% slack for stragglers). */
export const TARGET_REFUSED_SHARE = 0.99;
/** Memory of each worker beyond the first over the first worker's RSS, at most (stated at 1M ads). */
export const TARGET_EXTRA_WORKER_MEMORY = 0.3;
/** An overload phase whose generators offered less than this share of the asked rate is labelled with what they offered. */
export const OFFERED_SHORTFALL = 0.95;

/** PASS or MISS against a target; `info` where the issue states none for this case. */
export type Verdict = 'PASS' | 'MISS' | 'info';

/** One line of the summary table. */
export interface TargetRow {
  name: string;
  /** The figure, with what it was computed from. */
  measured: string;
  /** The limit as the issue states it (`<= 1.0 ms`), or `-`. */
  target: string;
  verdict: Verdict;
  /** The figure compared with the limit (null when not measured). */
  value: number | null;
  limit: number | null;
}

/** CPU per Retrieve limits, milliseconds: stated for 100k ads (all threads) and for 1M (all threads and JS thread). */
export interface CpuTargets {
  /** Which statement applies: the nearer of 100k and 1M on a log scale. */
  size: '100k' | '1M';
  allThreadsMs: number;
  /** Undefined where the issue states none (100k). */
  jsThreadMs?: number;
}

/** The CPU limits for a catalog of `ads` ads. */
export function cpuTargets(ads: number): CpuTargets {
  return ads < Math.sqrt(1e5 * 1e6) ? { size: '100k', allThreadsMs: 0.5 } : { size: '1M', allThreadsMs: 1.0, jsThreadMs: 0.25 };
}

/** Whether the memory target (stated at 1M ads) applies to a catalog of `ads` ads. */
export function memoryTargetApplies(ads: number): boolean {
  return cpuTargets(ads).size === '1M';
}

/**
 * A row comparing `value` with `limit` in direction `cmp`: `info` when there is no limit (then
 * `limitText`, if given, says why), MISS when nothing was measured. `limitText` replaces the
 * printed limit (units, where it is stated).
 */
export function targetRow(name: string, value: number | null | undefined, cmp: '<=' | '>=', limit: number | undefined, measured: string, limitText?: string): TargetRow {
  const v = value === undefined || value === null || Number.isNaN(value) ? null : value;
  const verdict: Verdict = limit === undefined ? 'info' : v === null ? 'MISS' : (cmp === '<=' ? v <= limit : v >= limit) ? 'PASS' : 'MISS';
  return {
    name,
    measured: v === null ? `not measured${measured ? ` (${measured})` : ''}` : measured,
    target: limit === undefined ? (limitText ?? '-') : `${cmp} ${limitText ?? String(limit)}`,
    verdict,
    value: v,
    limit: limit ?? null,
  };
}

/** Failed calls of a phase grouped as the issue counts them. */
export interface StatusCounts {
  resourceExhausted: number;
  deadlineExceeded: number;
  other: number;
}

/** Groups errors by status name into RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED and the rest. */
export function statusCounts(errors: Readonly<Record<string, number>>): StatusCounts {
  const out: StatusCounts = { resourceExhausted: 0, deadlineExceeded: 0, other: 0 };
  for (const [name, n] of Object.entries(errors)) {
    if (name === 'RESOURCE_EXHAUSTED') out.resourceExhausted += n;
    else if (name === 'DEADLINE_EXCEEDED') out.deadlineExceeded += n;
    else out.other += n;
  }
  return out;
}

/** One open-loop overload phase as measured. */
export interface OverloadPoint {
  /** The multiple of the maximum asked for. */
  multiple: number;
  /** Calls the generators really sent per second of the window. */
  offeredQps: number;
  /** OK answers per second. */
  goodputQps: number;
  /** p99 of OK answers, milliseconds (null when none). */
  p99Ms: number | null;
  errors: Readonly<Record<string, number>>;
  /** Due calls the generators' outstanding cap held back past the window. */
  unsent: number;
}

/** The multiple the generators really offered, and whether it fell short of the one asked for. */
export function offeredMultiple(p: OverloadPoint, maxQps: number): { multiple: number; short: boolean } {
  const multiple = maxQps > 0 ? p.offeredQps / maxQps : NaN;
  return { multiple, short: !(p.offeredQps >= OFFERED_SHORTFALL * p.multiple * maxQps) };
}

/** The phase the issue calls "half load": of the multiples below 1, the nearest to 0.5. */
export function halfLoadPoint(points: readonly OverloadPoint[]): OverloadPoint | undefined {
  let best: OverloadPoint | undefined;
  for (const p of points) {
    if (p.multiple < 1 && (best === undefined || Math.abs(p.multiple - 0.5) < Math.abs(best.multiple - 0.5))) best = p;
  }
  return best;
}

function x(m: number): string {
  return `${Number(m.toFixed(2))}x`;
}

/**
 * Rows for every overload phase above 1x of `maxQps`: goodput over the maximum, p99 over the p99
 * at half load, and the share of failures refused as RESOURCE_EXHAUSTED. `label` names the server
 * (e.g. `2 workers`). A phase whose generators fell short of the asked rate says what they offered.
 */
export function overloadTargets(maxQps: number, points: readonly OverloadPoint[], label: string): TargetRow[] {
  const rows: TargetRow[] = [];
  const half = halfLoadPoint(points);
  for (const p of points) {
    if (p.multiple <= 1) continue;
    const offered = offeredMultiple(p, maxQps);
    const at = `${x(p.multiple)}${offered.short ? ` (offered only ${x(offered.multiple)})` : ''}`;
    const share = maxQps > 0 ? p.goodputQps / maxQps : null;
    rows.push(
      targetRow(`goodput at ${at} / max, ${label}`, share, '>=', TARGET_GOODPUT_SHARE, `${fixed(share ?? undefined, 3)} (${grouped(p.goodputQps)} / ${grouped(maxQps)} QPS)`, TARGET_GOODPUT_SHARE.toFixed(2)),
    );
    const growth = half && half.p99Ms !== null && half.p99Ms > 0 && p.p99Ms !== null ? p.p99Ms / half.p99Ms : null;
    rows.push(
      targetRow(
        `p99 at ${at} / p99 at ${half ? x(half.multiple) : 'half load'}, ${label}`,
        growth,
        '<=',
        TARGET_P99_GROWTH,
        half ? `${fixed(growth ?? undefined, 2)} (${fixed(p.p99Ms ?? undefined, 2)} / ${fixed(half.p99Ms ?? undefined, 2)} ms)` : 'no phase below 1x',
      ),
    );
    const s = statusCounts(p.errors);
    const failed = s.resourceExhausted + s.deadlineExceeded + s.other + p.unsent;
    const refused = failed === 0 ? 1 : s.resourceExhausted / failed;
    rows.push(
      targetRow(
        `failed calls at ${at} that are RESOURCE_EXHAUSTED, ${label}`,
        refused,
        '>=',
        TARGET_REFUSED_SHARE,
        failed === 0
          ? 'nothing refused: every call answered OK'
          : `${fixed(refused * 100, 1)}% of ${grouped(failed)} (DEADLINE_EXCEEDED ${grouped(s.deadlineExceeded)}, other ${grouped(s.other)}, unsent ${grouped(p.unsent)})`,
        `${TARGET_REFUSED_SHARE * 100}%`,
      ),
    );
  }
  return rows;
}

/** Memory of one `funnel serve` process, bytes. */
export interface ProcessMemoryRow {
  pid: number;
  role: 'primary' | 'worker' | 'server';
  rss: number;
  pss: number;
  privateBytes: number;
}

/** Each worker after the first (in the given order): its private memory and its RSS over the first worker's RSS. */
export function extraWorkerRatios(workers: readonly ProcessMemoryRow[]): { pid: number; privateShare: number; rssShare: number }[] {
  const first = workers[0];
  if (first === undefined || !(first.rss > 0)) return [];
  return workers.slice(1).map((w) => ({ pid: w.pid, privateShare: w.privateBytes / first.rss, rssShare: w.rss / first.rss }));
}
