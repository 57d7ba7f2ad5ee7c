/** Timing of search loops: one untimed pass that keeps the answers, then timed passes until enough time has passed. */
import { IdRows, MISSING_ID } from './recall';

/** A search answered one query per call: `run(q)` is what gets timed; `ids(answer)` is called only outside the timed loop. */
export interface QuerySearcher<R> {
  /** Answers query number `q` (0-based). */
  run(q: number): R;
  /** Ids of an answer of `run`, best first. */
  ids(answer: R): ArrayLike<number>;
}

/** Throughput of repeated passes: `qps` = queries answered / `seconds` spent in the timed passes. */
export interface Throughput {
  qps: number;
  seconds: number;
  passes: number;
}

/** Answers of the untimed pass plus the throughput of the timed passes. */
export interface SearchMeasurement extends Throughput {
  /** `queries` rows of `k` ids; slots left empty by a short answer hold {@link MISSING_ID}. */
  found: IdRows;
}

/** Runs `global.gc()` when node was started with --expose-gc; otherwise does nothing. */
export function collectGarbage(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc) gc();
}

/**
 * Times `pass` (which answers `queriesPerPass` queries) repeatedly until at least `minSeconds`
 * of timed passes have accumulated, after one untimed warm-up pass unless `warmUp` is false.
 */
export function timePasses(pass: () => void, queriesPerPass: number, minSeconds: number, warmUp = true): Throughput {
  if (warmUp) pass();
  collectGarbage();
  let elapsedNs = 0n;
  let passes = 0;
  const minNs = BigInt(Math.round(minSeconds * 1e9));
  do {
    const start = process.hrtime.bigint();
    pass();
    elapsedNs += process.hrtime.bigint() - start;
    passes++;
  } while (elapsedNs < minNs);
  const seconds = Number(elapsedNs) / 1e9;
  return { qps: (passes * queriesPerPass) / seconds, seconds, passes };
}

/**
 * Runs query 0..queries-1 once untimed, keeping the first `k` ids of each answer (this is also
 * the warm-up), then times passes over all queries with {@link timePasses}.
 */
export function measureSearcher<R>(
  searcher: QuerySearcher<R>,
  queries: number,
  k: number,
  minSeconds: number,
): SearchMeasurement {
  const data = new Uint32Array(queries * k).fill(MISSING_ID);
  for (let q = 0; q < queries; q++) {
    const ids = searcher.ids(searcher.run(q));
    const m = Math.min(k, ids.length);
    for (let i = 0; i < m; i++) data[q * k + i] = ids[i];
  }
  const throughput = timePasses(
    () => {
      for (let q = 0; q < queries; q++) searcher.run(q);
    },
    queries,
    minSeconds,
    false,
  );
  return { ...throughput, found: { rows: queries, cols: k, data } };
}

/** A progress logger: each line on stderr, stamped with the seconds since the logger was made. */
export function progressLog(): (message: string) => void {
  const startedAt = process.hrtime.bigint();
  return (message) => {
    const s = Number(process.hrtime.bigint() - startedAt) / 1e9;
    process.stderr.write(`[${s.toFixed(1).padStart(7)}s] ${message}\n`);
  };
}

/** One system of an interleaved sweep: `searcher(ef)` answers the queries at beam width `ef`. */
export interface SweepSubject {
  name: string;
  searcher(ef: number): QuerySearcher<unknown>;
}

/** One (system, ef) cell of an interleaved sweep: the answers of its first pass and each round's QPS. */
export interface SweepCell {
  found: IdRows;
  qps: number[];
}

/**
 * Times every subject at every ef in `rounds` rounds. Round r visits the subjects in their order
 * when r is even and reversed when odd, so a machine that speeds up or slows down over the run
 * (shared hosts do) weighs on every subject alike instead of on whichever ran last. The first
 * visit of a cell also keeps its answers (untimed, the warm-up). Returns cells[subject][ef].
 */
export function interleavedSweep(
  subjects: readonly SweepSubject[],
  efs: readonly number[],
  queries: number,
  k: number,
  minSeconds: number,
  rounds: number,
  onVisit: (subject: string, ef: number, round: number) => void = () => {},
): SweepCell[][] {
  const cells: (SweepCell | undefined)[][] = subjects.map(() => efs.map(() => undefined));
  for (let r = 0; r < rounds; r++) {
    const order = subjects.map((_, i) => i);
    if (r % 2 === 1) order.reverse();
    for (const si of order) {
      for (let ei = 0; ei < efs.length; ei++) {
        onVisit(subjects[si].name, efs[ei], r);
        collectGarbage();
        const searcher = subjects[si].searcher(efs[ei]);
        const cell = cells[si][ei];
        if (cell === undefined) {
          const m = measureSearcher(searcher, queries, k, minSeconds);
          cells[si][ei] = { found: m.found, qps: [m.qps] };
        } else {
          cell.qps.push(
            timePasses(() => {
              for (let q = 0; q < queries; q++) searcher.run(q);
            }, queries, minSeconds).qps,
          );
        }
      }
    }
  }
  return cells as SweepCell[][];
}

/** Median of a non-empty list (mean of the middle two for an even count). */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new Error('median of an empty list');
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}
