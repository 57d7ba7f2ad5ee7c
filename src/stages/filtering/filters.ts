/**
 * Filters: the guard of the eligibility invariant, and pacing. Whatever the sources returned
 * (unknown ids, ids outside the request's eligible set, duplicates, ads paused since the index was
 * built), only ads that may be shown to this request at `ctx.nowMs` leave this stage. Pacing then
 * throttles ads whose spend today runs ahead of the day's schedule.
 */
import type { FiltersStageConfig } from '../../config/schema';
import type { Candidate, Stage, StageContext } from '../../pipeline/types';

const DAY_MS = 86_400_000;

/** Pacing settings of the Filters stage. */
export type PacingConfig = FiltersStageConfig['pacing'];

/** Fraction of the UTC day elapsed at epoch ms `nowMs`, in [0, 1). */
export function dayFractionAt(nowMs: number): number {
  const r = nowMs % DAY_MS;
  return (r < 0 ? r + DAY_MS : r) / DAY_MS;
}

/** Budget fraction the schedule allows at `dayFraction`: `curve` ([day fraction, budget fraction], x increasing) interpolated linearly, clamped to its end points. */
export function scheduleAt(curve: ReadonlyArray<readonly [number, number]>, dayFraction: number): number {
  const n = curve.length;
  if (n === 0) return 1;
  if (!(dayFraction > curve[0][0])) return curve[0][1];
  for (let i = 1; i < n; i++) {
    const [x1, y1] = curve[i];
    if (dayFraction <= x1) {
      const [x0, y0] = curve[i - 1];
      return x1 > x0 ? y0 + ((y1 - y0) * (dayFraction - x0)) / (x1 - x0) : y1;
    }
  }
  return curve[n - 1][1];
}

/** Whether pacing lets an ad with `spendMicros` of `budgetMicros` spent today be served at `dayFraction`; always true when pacing is off or the budget is not finite and > 0. */
export function pacingAllows(spendMicros: number, budgetMicros: number, dayFraction: number, pacing: PacingConfig): boolean {
  if (!pacing.enabled || !(budgetMicros > 0) || budgetMicros === Infinity) return true;
  return spendMicros / budgetMicros <= scheduleAt(pacing.curve, dayFraction) + pacing.tolerance;
}

/**
 * A set of ids for one run of Filters: open addressing over typed arrays, reused across runs (a
 * run is synchronous), emptied in O(1) by a generation stamp, so a run allocates nothing.
 */
class IdSet {
  private ids = new Int32Array(256);
  private gens = new Uint32Array(256);
  private gen = 1;
  private mask = 255;
  /** 32 - log2(size): the product's high bits pick the slot (its low bits depend on the id's low bits alone). */
  private shift = 24;

  /** Empties the set, sized for `n` ids. */
  reset(n: number): void {
    let size = this.ids.length;
    while (size < 2 * n) size *= 2;
    if (size !== this.ids.length) {
      this.ids = new Int32Array(size);
      this.gens = new Uint32Array(size);
      this.mask = size - 1;
      this.shift = Math.clz32(size) + 1;
      this.gen = 0;
    }
    if (++this.gen === 0xffffffff) {
      this.gens.fill(0);
      this.gen = 1;
    }
  }

  /** Adds `id` (a non-negative integer below 2^31); false when it was there already. */
  add(id: number): boolean {
    const mask = this.mask;
    let i = Math.imul(id, 0x9e3779b1) >>> this.shift;
    for (;;) {
      if (this.gens[i] !== this.gen) {
        this.gens[i] = this.gen;
        this.ids[i] = id;
        return true;
      }
      if (this.ids[i] === id) return false;
      i = (i + 1) & mask;
    }
  }
}

/** Keeps, in input order and once each, the candidates that are eligible for the request at ctx.nowMs (present, active, in flight, under budget, in ctx.eligible, not excluded or blocked) and that pacing allows. */
export class Filters implements Stage<Candidate[], Candidate[]> {
  readonly name = 'Filters';
  private readonly seen = new IdSet();

  run(ctx: StageContext, input: Candidate[]): Candidate[] {
    const out: Candidate[] = [];
    const eligible = ctx.eligible;
    if (eligible === null) {
      // No eligible set (its stage failed): nothing is provably eligible, so nothing is returned.
      ctx.drop('ineligible', input.length);
      return out;
    }
    const ads = ctx.state.ads;
    const now = ctx.nowMs;
    const bits = eligible.bits;
    const limit = bits.length * 32;
    const { excludeAdIds, excludeAdvertiserIds, blockedCategories } = ctx.query;
    const checkAdIds = excludeAdIds.size !== 0;
    const checkAdvertisers = excludeAdvertiserIds.size !== 0;
    const checkCategories = blockedCategories.size !== 0;
    const pacing = ctx.pipeline.stages.Filters.pacing;
    // The schedule is the same for every ad of the request: one interpolation, not one per ad.
    const maxSpendShare = pacing.enabled ? scheduleAt(pacing.curve, dayFractionAt(now)) + pacing.tolerance : Infinity;
    const seen = this.seen;
    seen.reset(input.length);
    let ineligible = 0;
    let duplicate = 0;
    let paced = 0;
    const epoch = eligible.epoch;
    for (let i = 0; i < input.length; i++) {
      const c = input[i];
      const id = c.id;
      if (
        !ads.has(id) ||
        ads.changedAfter(id, epoch) ||
        id >= limit ||
        ((bits[id >>> 5] >>> (id & 31)) & 1) === 0 ||
        !ads.isActive(id) ||
        !ads.inFlight(id, now) ||
        !ads.underBudget(id, now) ||
        (checkAdIds && excludeAdIds.has(ads.adId(id))) ||
        (checkAdvertisers && excludeAdvertiserIds.has(ads.advertiserId(id))) ||
        (checkCategories && blockedCategories.has(ads.category(id)))
      ) {
        ineligible++;
        continue;
      }
      if (!seen.add(id)) {
        duplicate++;
        continue;
      }
      const budget = ads.budgetMicros(id);
      if (budget > 0 && budget !== Infinity && ads.spendToday(id, now) / budget > maxSpendShare) {
        paced++;
        continue;
      }
      out.push(c);
    }
    ctx.drop('ineligible', ineligible);
    ctx.drop('duplicate', duplicate);
    ctx.drop('paced', paced);
    return out;
  }
}
