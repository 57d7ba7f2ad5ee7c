/** Throughput of a system at a target recall, from its sweep of search settings. */

/** One measured search setting of a sweep. */
export interface SweepPoint {
  setting: string;
  recall: number;
  qps: number;
}

/** Throughput at the target: the best measured setting reaching it, and an interpolation when the sweep brackets it. */
export interface QpsAtRecall {
  /** Highest-QPS measured setting with recall >= target; undefined when none reaches it. */
  measured?: { qps: number; setting: string };
  /**
   * log(QPS) interpolated linearly in recall between the two consecutive settings (in sweep
   * order) whose recalls bracket the target; undefined when the first setting already reaches it
   * or none does.
   */
  interpolated?: { qps: number; between: [string, string] };
}

/** Reads a sweep given in increasing-effort order (e.g. ascending ef) at recall `target`. */
export function qpsAtRecall(sweep: readonly SweepPoint[], target: number): QpsAtRecall {
  const out: QpsAtRecall = {};
  for (const p of sweep) {
    if (p.recall >= target && (out.measured === undefined || p.qps > out.measured.qps)) {
      out.measured = { qps: p.qps, setting: p.setting };
    }
  }
  for (let i = 1; i < sweep.length; i++) {
    const a = sweep[i - 1];
    const b = sweep[i];
    if (a.recall < target && b.recall >= target) {
      const t = b.recall === a.recall ? 1 : (target - a.recall) / (b.recall - a.recall);
      const qps = Math.exp(Math.log(a.qps) + t * (Math.log(b.qps) - Math.log(a.qps)));
      out.interpolated = { qps, between: [a.setting, b.setting] };
      break;
    }
  }
  return out;
}
