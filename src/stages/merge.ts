/**
 * Merge: the sourcing stages' lists made one, before filtering and ranking. A candidate found by
 * several sources appears once, with every source's bit, its similarity when any source computed
 * it, and its best rank.
 */
import type { Candidate, Stage, StageContext } from '../pipeline/types';

// Packed sort key (rank, list, first sighting) = (rank * PACK_LISTS + list) * PACK_SEEN + seen,
// exact in a double: 2^27 * 2^6 * 2^20 = 2^53.
const PACK_SEEN = 2 ** 20;
const PACK_LISTS = 2 ** 6;
const PACK_RANKS = 2 ** 27;

/** De-duplicates the sourcing lists by id: sources OR'ed, annScore the largest non-NaN, sourceRank the minimum; ordered by sourceRank ascending, ties by list order then first sighting. */
export class Merge implements Stage<Candidate[][], Candidate[]> {
  readonly name = 'Merge';
  private keys = new Float64Array(256);

  run(ctx: StageContext, lists: Candidate[][]): Candidate[] {
    const at = new Map<number, number>();
    const merged: Candidate[] = [];
    // The list that gave each merged candidate its best rank: the tie-break after sourceRank.
    const bestList: number[] = [];
    let duplicates = 0;
    for (let l = 0; l < lists.length; l++) {
      const list = lists[l];
      for (let p = 0; p < list.length; p++) {
        const c = list[p];
        // A rank that is not a number would poison the sort; its position in the list stands in.
        const rank = Number.isNaN(c.sourceRank) ? p : c.sourceRank;
        const i = at.get(c.id);
        if (i === undefined) {
          at.set(c.id, merged.length);
          merged.push({ id: c.id, sources: c.sources, annScore: c.annScore, sourceRank: rank, score: NaN });
          bestList.push(l);
          continue;
        }
        duplicates++;
        const m = merged[i];
        m.sources |= c.sources;
        if (!Number.isNaN(c.annScore) && !(m.annScore >= c.annScore)) m.annScore = c.annScore;
        if (rank < m.sourceRank) {
          m.sourceRank = rank;
          bestList[i] = l;
        }
      }
    }
    ctx.note('duplicates', duplicates);
    const n = merged.length;
    const eligible = ctx.eligible;
    if (eligible) {
      // Eligible ads no source returned: the funnel's sourcing loss.
      const bits = eligible.bits;
      let sourced = 0;
      for (let i = 0; i < n; i++) {
        const id = merged[i].id;
        if (id >>> 5 < bits.length && (bits[id >>> 5] >>> (id & 31)) & 1) sourced++;
      }
      ctx.drop('not_sourced', eligible.count - sourced);
    }
    const out = new Array<Candidate>(n);
    // The usual case (integer ranks, few lists) sorts packed numeric keys natively, with no
    // comparator calls; any other input falls back to a comparator sort with the same order.
    if (n <= PACK_SEEN && lists.length <= PACK_LISTS) {
      // Reused scratch (run() is synchronous): a request allocates no key array.
      if (this.keys.length < n) this.keys = new Float64Array(Math.max(n, 2 * this.keys.length));
      const keys = this.keys.subarray(0, n);
      let packed = true;
      for (let i = 0; i < n; i++) {
        const r = merged[i].sourceRank;
        if (!(r >= 0 && r < PACK_RANKS && Number.isInteger(r))) {
          packed = false;
          break;
        }
        keys[i] = (r * PACK_LISTS + bestList[i]) * PACK_SEEN + i;
      }
      if (packed) {
        keys.sort();
        for (let i = 0; i < n; i++) out[i] = merged[keys[i] % PACK_SEEN];
        return out;
      }
    }
    const order = new Array<number>(n);
    for (let i = 0; i < n; i++) order[i] = i;
    order.sort((a, b) => {
      const ra = merged[a].sourceRank;
      const rb = merged[b].sourceRank;
      if (ra !== rb) return ra < rb ? -1 : 1;
      return bestList[a] - bestList[b] || a - b;
    });
    for (let i = 0; i < n; i++) out[i] = merged[order[i]];
    return out;
  }
}
