/**
 * Arithmetic and text of bench:cluster: the root's ready line, what the replicas and the publish
 * say about their own times, overlap@N of two answers, CPU per request, the cluster-over-node
 * ratios, and the rows of the printed table. Pure: bench/cluster.ts measures and prints.
 */
import type { ServingBanner } from './server-process';
import { fixed, grouped } from './table';

/** Parses the line `funnel root` prints once it listens (`funnel root serving on HOST:PORT (N shards, ...)`); undefined for any other line. */
export function parseRootBanner(line: string): ServingBanner | undefined {
  const m = /^funnel root serving on (\[[^\]]+\]|[^\s:]+):(\d+)\b/.exec(line.trim());
  return m ? { host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2]) } : undefined;
}

/** Seconds `funnel ingest --nats` reports on its `time:` line (validate, publish, total); empty when absent. */
export function parsePublishTimes(stdout: string): { validate?: number; publish?: number; total?: number } {
  const line = /^time: (.*)$/m.exec(stdout)?.[1] ?? '';
  const out: { validate?: number; publish?: number; total?: number } = {};
  for (const key of ['validate', 'publish', 'total'] as const) {
    const m = new RegExp(`\\b${key} (\\d+(?:\\.\\d+)?)s\\b`).exec(line);
    if (m) out[key] = Number(m[1]);
  }
  return out;
}

/** Where a replica's start went, seconds, from its own log records. */
export interface ReplicaStartup {
  /** Catching up with the stream (`replica bootstrapped from the stream`). */
  streamSeconds?: number;
  /** Messages applied while catching up. */
  applied?: number;
  /** Building or loading the ANN index (`ann index ready`), and how (`rebuilt`, `loaded`, ...). */
  indexSeconds?: number;
  indexHow?: string;
  /** Loading the catalog into memory (`catalog loaded`). */
  loadSeconds?: number;
}

/** Reads a replica's startup records from its stderr lines (pino JSON; other lines are skipped). */
export function parseReplicaStartup(lines: readonly string[]): ReplicaStartup {
  const out: ReplicaStartup = {};
  for (const line of lines) {
    let rec: { msg?: unknown; seconds?: unknown; applied?: unknown; how?: unknown };
    try {
      rec = JSON.parse(line) as typeof rec;
    } catch {
      continue;
    }
    if (rec === null || typeof rec !== 'object') continue;
    const seconds = typeof rec.seconds === 'number' ? rec.seconds : undefined;
    if (rec.msg === 'replica bootstrapped from the stream') {
      out.streamSeconds = seconds;
      if (typeof rec.applied === 'number') out.applied = rec.applied;
    } else if (rec.msg === 'ann index ready') {
      out.indexSeconds = seconds;
      if (typeof rec.how === 'string') out.indexHow = rec.how;
    } else if (rec.msg === 'catalog loaded') {
      out.loadSeconds = seconds;
    }
  }
  return out;
}

/**
 * overlap@n: the share of `reference`'s first `n` ids that `other`'s first `n` ids also hold
 * (order ignored); undefined when `reference` is empty.
 */
export function overlapAt(reference: readonly string[], other: readonly string[], n: number): number | undefined {
  const ref = new Set(reference.slice(0, n));
  if (ref.size === 0) return undefined;
  const got = new Set(other.slice(0, n));
  let both = 0;
  for (const id of ref) if (got.has(id)) both++;
  return both / ref.size;
}

/** Mean overlap@n over request pairs (reference answer, other answer); pairs with an empty reference are counted apart, not averaged. */
export function meanOverlap(pairs: readonly (readonly [readonly string[], readonly string[]])[], n: number): { mean: number | null; compared: number; emptyReference: number } {
  let sum = 0;
  let compared = 0;
  for (const [ref, other] of pairs) {
    const o = overlapAt(ref, other, n);
    if (o === undefined) continue;
    sum += o;
    compared++;
  }
  return { mean: compared === 0 ? null : sum / compared, compared, emptyReference: pairs.length - compared };
}

/** CPU milliseconds per OK request; null without OK requests or a reading. */
export function cpuMsPerRequest(cpuSeconds: number | undefined, ok: number): number | null {
  return cpuSeconds === undefined || !Number.isFinite(cpuSeconds) || ok <= 0 ? null : (cpuSeconds / ok) * 1000;
}

/** `a / b`; null when either is missing or `b` is not positive. */
export function ratio(a: number | null | undefined, b: number | null | undefined): number | null {
  return a === null || a === undefined || b === null || b === undefined || !Number.isFinite(a) || !(b > 0) ? null : a / b;
}

/** Failed calls (by status) plus unsent: `0`, or `12 (DEADLINE_EXCEEDED 10, unsent 2)`. */
export function describeFailures(errors: Readonly<Record<string, number>>, unsent: number): string {
  const parts = Object.entries(errors)
    .filter(([, n]) => n > 0)
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([name, n]) => `${name} ${n}`);
  if (unsent > 0) parts.push(`unsent ${unsent}`);
  const total = Object.values(errors).reduce((a, b) => a + b, 0) + unsent;
  return total === 0 ? '0' : `${total} (${parts.join(', ')})`;
}

/** One system in one phase: a printed row and a JSON line. */
export interface ClusterRow {
  system: 'node' | 'cluster';
  /** `max` = closed loop at fixed outstanding calls; `rate` = open loop at `target_qps`. */
  phase: 'max' | 'rate';
  target_qps: number | null;
  /** Closed loop: calls kept outstanding; open loop: the cap on them. */
  outstanding: number;
  /** Calls sent per second of the window, by the clock. */
  offered_per_s: number;
  ok_per_s: number;
  ok: number;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
  max_ms: number | null;
  /** Failed calls plus unsent ones. */
  error_count: number;
  /** Failed calls by status name. */
  errors: Record<string, number>;
  unsent: number;
  /** Open loop: due requests had to wait for the outstanding cap (the system fell behind). */
  cap_reached: boolean;
  seconds: number;
  /** CPU (utime+stime, all threads, process and descendants) per OK request, ms, by process: `node`, or `root`, `shard-0`, ...; null when not read. */
  cpu_ms_per_request: Record<string, number | null>;
  /** The same CPU in cores over the window. */
  cpu_cores: Record<string, number | null>;
  /** Cluster rows: the sum over root and shards per OK request, ms. */
  cluster_cpu_ms_per_request: number | null;
  /** Cluster rows: nats-server's CPU over the window, cores. */
  nats_cpu_cores: number | null;
  loadgen_cpu_cores: number;
  mean_candidates: number | null;
  degraded_fraction: number | null;
  /** Share of OK answers naming each stage in degraded_stages. */
  degraded_stages: Record<string, number>;
  /** Cluster rows of the `max` phase: OK/s over the node's; null otherwise. */
  qps_ratio_vs_node: number | null;
  /** Cluster rows: p99 over the node's in the same phase; null otherwise. */
  p99_ratio_vs_node: number | null;
  first_error?: string;
}

function roundRatio(v: number | null): number | null {
  return v === null ? null : Math.round(v * 1e4) / 1e4;
}

/** Sets the cluster rows' ratios (to 4 decimals) to the node row of the same phase (and rate); node rows get null. */
export function withRatios(rows: readonly ClusterRow[]): ClusterRow[] {
  return rows.map((r) => {
    if (r.system !== 'cluster') return { ...r, qps_ratio_vs_node: null, p99_ratio_vs_node: null };
    const node = rows.find((n) => n.system === 'node' && n.phase === r.phase && n.target_qps === r.target_qps);
    return {
      ...r,
      qps_ratio_vs_node: roundRatio(r.phase === 'max' ? ratio(r.ok_per_s, node?.ok_per_s) : null),
      p99_ratio_vs_node: roundRatio(ratio(r.p99_ms, node?.p99_ms)),
    };
  });
}

/** Column headers of {@link tableCells} for a cluster of `shards` shards. */
export function tableHeaders(shards: number): string[] {
  return [
    'system',
    'phase',
    'OK/s',
    'p50 ms',
    'p99 ms',
    'errors',
    'CPU ms/req: node',
    'root',
    ...Array.from({ length: shards }, (_, i) => `shard-${i}`),
    'root+shards',
    'max QPS cl/node',
    'p99 cl/node',
  ];
}

/** The printed cells of one row, one per {@link tableHeaders} column (`-` where a figure does not apply). */
export function tableCells(r: ClusterRow, shards: number): string[] {
  const cpu = (name: string): string => fixed(r.cpu_ms_per_request[name] ?? undefined, 3);
  const x = (v: number | null): string => (v === null ? '-' : `${fixed(v, 2)}x`);
  return [
    r.system === 'node' ? 'node' : `root+${shards} shards`,
    r.phase === 'max' ? `max (${r.outstanding} outstanding)` : `${grouped(r.target_qps ?? undefined)}/s`,
    grouped(r.ok_per_s),
    fixed(r.p50_ms ?? undefined, 2),
    fixed(r.p99_ms ?? undefined, 2),
    describeFailures(r.errors, r.unsent),
    cpu('node'),
    cpu('root'),
    ...Array.from({ length: shards }, (_, i) => cpu(`shard-${i}`)),
    fixed(r.cluster_cpu_ms_per_request ?? undefined, 3),
    x(r.qps_ratio_vs_node),
    x(r.p99_ratio_vs_node),
  ];
}
