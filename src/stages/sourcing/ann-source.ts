/**
 * Ann sourcing: a filtered HNSW search on the user embedding, inside the eligible set (the
 * filter is applied in the graph walk or by an exact scan of the allowed ids, chosen per query
 * by the addon's planner), on libuv's thread pool.
 */
import type { HnswIndex } from '../../native/index';
import { SOURCE_BIT, type Candidate, type Stage, type StageContext } from '../../pipeline/types';

/** Ann candidates, best first, with their similarity as `annScore`. */
export class AnnSource implements Stage<void, Candidate[]> {
  readonly name = 'Ann';
  constructor(private readonly index: () => HnswIndex) {}

  async run(ctx: StageContext): Promise<Candidate[]> {
    const cfg = ctx.pipeline.stages.Ann;
    const query = ctx.query.embedding;
    const eligible = ctx.eligible;
    const index = this.index();
    ctx.note('index_size', index.size);
    if (!query || !eligible) return [];
    ctx.note('allowed', eligible.count);
    const k = Math.min(cfg.k, eligible.count, index.size);
    if (k <= 0) return [];
    const r = await index.searchAsync(query, k, { ef: Math.max(cfg.ef, k), allowBits: eligible.bits });
    ctx.note('plan', r.plan);
    ctx.note('visited', r.visited);
    const out: Candidate[] = new Array(r.ids.length);
    for (let i = 0; i < r.ids.length; i++) {
      out[i] = { id: r.ids[i], sources: SOURCE_BIT.Ann, annScore: r.scores[i], sourceRank: i, score: NaN };
    }
    return out;
  }
}
