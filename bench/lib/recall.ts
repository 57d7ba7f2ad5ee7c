/** Recall of approximate nearest-neighbour answers against exact ones. */

/** Row-major id matrix: row `q` is `data[q*cols .. q*cols+cols)`; negative ids and 0xFFFFFFFF mark empty slots. */
export interface IdRows {
  rows: number;
  cols: number;
  data: ArrayLike<number>;
}

/** Id value of an empty slot in a {@link IdRows} (also accepted: any negative id). */
export const MISSING_ID = 0xffffffff;

function isMissing(id: number): boolean {
  return id < 0 || id === MISSING_ID;
}

/**
 * Mean over queries of |first k found ∩ first k true| / (true ids among the first k).
 * The denominator is below k only when the truth row has empty slots (a filter allowing fewer
 * than k ids); rows with no true id at all are left out of the mean. Returns a value in [0, 1],
 * or 1 when no row has a true id. `found` and `truth` must have the same number of rows.
 */
export function recallAtK(found: IdRows, truth: IdRows, k: number): number {
  if (!Number.isInteger(k) || k <= 0) throw new Error(`recallAtK: k must be a positive integer, got ${k}`);
  if (found.rows !== truth.rows) {
    throw new Error(`recallAtK: ${found.rows} found rows but ${truth.rows} truth rows`);
  }
  if (truth.cols < k) throw new Error(`recallAtK: truth has ${truth.cols} columns, fewer than k=${k}`);
  const foundK = Math.min(k, found.cols);
  let sum = 0;
  let counted = 0;
  for (let q = 0; q < truth.rows; q++) {
    const tBase = q * truth.cols;
    const fBase = q * found.cols;
    let relevant = 0;
    let hits = 0;
    for (let i = 0; i < k; i++) {
      const t = truth.data[tBase + i];
      if (isMissing(t)) continue;
      relevant++;
      for (let j = 0; j < foundK; j++) {
        if (found.data[fBase + j] === t) {
          hits++;
          break;
        }
      }
    }
    if (relevant === 0) continue;
    sum += hits / relevant;
    counted++;
  }
  return counted === 0 ? 1 : sum / counted;
}
