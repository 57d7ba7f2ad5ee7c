/**
 * Targeting sourcing: eligible ads in the order of a prior (bid^a * quality^b * ctr_prior^c).
 * It walks the precomputed prior order and keeps eligible ids (about k / selectivity steps), or,
 * when few ads are eligible, scans the eligible bitset and keeps the best k by prior: whichever
 * the eligible count says is cheaper.
 */
import { SOURCE_BIT, type Candidate, type Stage, type StageContext } from '../../pipeline/types';
import type { AdTable } from '../../serving/ad-table';
import { priorOf, type PriorOrder } from '../../serving/prior-order';

/** Top-k of (key, id) by key descending, ties by id ascending; a small binary heap. */
function topByScan(bits: Uint32Array, k: number, key: (id: number) => number): number[] {
  const heapK: number[] = [];
  const heapId: number[] = [];
  // Min-heap on (key, -id): the root is the worst kept.
  const worse = (i: number, j: number) => heapK[i] < heapK[j] || (heapK[i] === heapK[j] && heapId[i] > heapId[j]);
  const swap = (i: number, j: number) => {
    [heapK[i], heapK[j]] = [heapK[j], heapK[i]];
    [heapId[i], heapId[j]] = [heapId[j], heapId[i]];
  };
  const down = (i: number) => {
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < heapK.length && worse(l, m)) m = l;
      if (r < heapK.length && worse(r, m)) m = r;
      if (m === i) return;
      swap(i, m);
      i = m;
    }
  };
  for (let w = 0; w < bits.length; w++) {
    let word = bits[w];
    while (word !== 0) {
      const t = word & -word;
      const id = (w << 5) + (31 - Math.clz32(t));
      word ^= t;
      const kv = key(id);
      if (heapK.length < k) {
        heapK.push(kv);
        heapId.push(id);
        let i = heapK.length - 1;
        while (i > 0) {
          const p = (i - 1) >> 1;
          if (!worse(i, p)) break;
          swap(i, p);
          i = p;
        }
      } else if (kv > heapK[0] || (kv === heapK[0] && id < heapId[0])) {
        heapK[0] = kv;
        heapId[0] = id;
        down(0);
      }
    }
  }
  const idx = heapId.map((_, i) => i).sort((a, b) => heapK[b] - heapK[a] || heapId[a] - heapId[b]);
  return idx.map((i) => heapId[i]);
}

/** Targeting candidates, best prior first. */
export class TargetingSource implements Stage<void, Candidate[]> {
  readonly name = 'Targeting';
  constructor(
    private readonly ads: AdTable,
    private readonly orders: PriorOrder,
  ) {}

  run(ctx: StageContext): Candidate[] {
    const cfg = ctx.pipeline.stages.Targeting;
    const eligible = ctx.eligible;
    if (!eligible || eligible.count === 0) return [];
    const bits = eligible.bits;
    const order = this.orders.get(cfg.prior);
    const k = Math.min(cfg.k, eligible.count);
    // Expected walk: k * |order| / eligible; a scan costs |bits| words plus a heap push per eligible id.
    const walkCost = (k * order.length) / eligible.count;
    const scanCost = bits.length + eligible.count * 4;
    let ids: number[];
    if (walkCost <= scanCost) {
      ctx.note('method', 'walk');
      ids = [];
      let steps = 0;
      for (let i = 0; i < order.length && ids.length < k; i++) {
        const id = order[i];
        steps++;
        if ((bits[id >>> 5] >>> (id & 31)) & 1) ids.push(id);
      }
      ctx.note('steps', steps);
    } else {
      ctx.note('method', 'scan');
      ids = topByScan(bits, k, (id) => (this.ads.has(id) ? priorOf(this.ads, id, cfg.prior) : -1));
    }
    return ids.map((id, i) => ({ id, sources: SOURCE_BIT.Targeting, annScore: NaN, sourceRank: i, score: NaN }));
  }
}
