import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { generateCatalog, generateRequests } from '../../src/catalog/generate';
import { HnswIndex } from '../../src/native/index';
import { annPath } from '../../src/store/ann-sync';
import { CatalogStore } from '../../src/store/catalog-store';
import { loadTargetingIndex } from '../../src/store/eligibility';
import { ingestCatalog } from '../../src/store/ingest';
import { evaluateTargeting } from '../../src/store/targeting-eval';
import { tempDir, writeCatalog } from '../fixtures/catalog';

describe('eligibility over an ingested data directory', () => {
  let tmp: string;
  before(() => {
    tmp = tempDir('elig');
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('when a generated catalog is ingested, then match() equals the direct evaluator and filters the ANN index', async () => {
    const rows = [...generateCatalog({ count: 3000, dim: 16, seed: 5 })];
    const data = path.join(tmp, 'data');
    await ingestCatalog(writeCatalog(tmp, 'gen.jsonl', rows as unknown as Array<Record<string, unknown>>), data, {
      threads: 1,
      ann: { metric: 'cos' },
    });
    const store = CatalogStore.open(data);
    const targeting = loadTargetingIndex(store);
    const ann = HnswIndex.load(annPath(store));
    const ads = [...store.ads()];
    for (const attrs of generateRequests(60, 9)) {
      const { bits, count } = targeting.match(attrs);
      const want = new Set(ads.filter((a) => evaluateTargeting(a.targeting ?? undefined, attrs)).map((a) => a.id));
      assert.equal(count, want.size);
      for (const a of ads) assert.equal(((bits[a.id >>> 5] >>> (a.id & 31)) & 1) === 1, want.has(a.id), `ad ${a.ad_id}`);
      if (count === 0) continue;
      const query = store.getEmbedding(ads[0].id)!;
      const r = ann.search(query, Math.min(10, ann.size), { allowBits: bits });
      for (const id of r.ids) assert.ok(want.has(id), 'the ANN answer honours targeting');
      assert.equal(r.ids.length, Math.min(10, count));
    }
    await store.close();
  });
});
