/**
 * Popularity sourcing: eligible ads by time-decayed engagement, first from the request's
 * segments (its values of the configured segment attributes, e.g. country=US) up to
 * `segment_share` of k, then from overall popularity up to k.
 */
import { SOURCE_BIT, type Candidate, type Stage, type StageContext } from '../../pipeline/types';

/** Popularity candidates, segment picks first. */
export class PopularitySource implements Stage<void, Candidate[]> {
  readonly name = 'Popularity';

  run(ctx: StageContext): Candidate[] {
    const cfg = ctx.pipeline.stages.Popularity;
    const eligible = ctx.eligible;
    if (!eligible || eligible.count === 0) return [];
    const bits = eligible.bits;
    const pop = ctx.state.popularity;
    const k = Math.min(cfg.k, eligible.count);
    const picked = new Set<number>();
    const out: Candidate[] = [];
    const take = (ranked: Uint32Array, until: number) => {
      for (let i = 0; i < ranked.length && out.length < until; i++) {
        const id = ranked[i];
        if (id >>> 5 >= bits.length || !((bits[id >>> 5] >>> (id & 31)) & 1) || picked.has(id)) continue;
        picked.add(id);
        out.push({ id, sources: SOURCE_BIT.Popularity, annScore: NaN, sourceRank: out.length, score: NaN });
      }
    };
    const segmentQuota = Math.round(k * cfg.segment_share);
    const attrs = ctx.query.attributes;
    let segments = 0;
    for (const attribute of ctx.state.popularityConfig.segment_attributes) {
      if (!Object.prototype.hasOwnProperty.call(attrs, attribute)) continue;
      for (const value of attrs[attribute]) {
        segments++;
        take(pop.ranked({ attribute, value }), segmentQuota);
      }
    }
    const fromSegments = out.length;
    take(pop.ranked(), k);
    ctx.note('segments', segments);
    ctx.note('from_segments', fromSegments);
    return out;
  }
}
