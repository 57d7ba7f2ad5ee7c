import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateCatalog } from '../../src/catalog/generate';
import { decodeRetrieveRequest } from '../../src/grpc/codec';
import { spawnSync } from 'node:child_process';
import { buildRequestPool, e2eCacheName, removeStaleScratch, writeCatalogJsonl } from '../../bench/lib/e2e-data';

describe('bench:e2e data', () => {
  it('when the cache is named, then ads, dimension and seed are in the name', () => {
    assert.equal(e2eCacheName(1_000_000, 64, 1), 'e2e-1000000-d64-s1');
  });

  it('when a catalog is written, then the file holds the generated rows, one JSON object a line', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-data-'));
    try {
      const file = path.join(dir, 'c.jsonl');
      const now = new Date('2025-06-01T00:00:00Z');
      const seen: number[] = [];
      await writeCatalogJsonl(file, { count: 2500, dim: 8, seed: 3, now }, (rows) => seen.push(rows));
      const lines = fs.readFileSync(file, 'utf8').split('\n');
      assert.equal(lines.pop(), '');
      assert.equal(lines.length, 2500);
      const expected = [...generateCatalog({ count: 2500, dim: 8, seed: 3, now })];
      assert.deepEqual(JSON.parse(lines[0]), expected[0]);
      assert.deepEqual(JSON.parse(lines[2499]), expected[2499]);
      assert.deepEqual(seen, []);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('when the request pool is built, then each buffer decodes to a valid request of the right shape', () => {
    const pool = buildRequestPool({ size: 40, dim: 16, seed: 5, sourceRows: 100, numResults: 50 });
    assert.equal(pool.length, 40);
    const again = buildRequestPool({ size: 40, dim: 16, seed: 5, sourceRows: 100, numResults: 50 });
    assert.ok(pool.every((b, i) => b.equals(again[i])), 'same spec, same bytes');
    const ids = new Set<string>();
    for (const buf of pool) {
      const r = decodeRetrieveRequest(buf);
      assert.equal(r.decodeError, undefined);
      assert.equal(r.num_results, 50);
      assert.equal(r.user_embedding.length, 16);
      assert.ok(r.user_embedding.every((x) => Number.isFinite(x)));
      ids.add(r.request_id);
    }
    assert.equal(ids.size, 40);
    const withAttributes = pool.filter((b) => Object.keys(decodeRetrieveRequest(b).attributes).length > 0).length;
    assert.ok(withAttributes > 30);
  });

  it('when a build was interrupted, then its scratch directory is removed and a live build\'s is kept', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'e2e-cache-'));
    try {
      const gone = spawnSync(process.execPath, ['-e', '0']).pid;
      fs.mkdirSync(path.join(dir, `e2e-10-d4-s1.tmp-${gone}`));
      fs.mkdirSync(path.join(dir, `e2e-10-d4-s1.tmp-${process.pid}`));
      fs.mkdirSync(path.join(dir, 'e2e-10-d4-s1'));
      const logged: string[] = [];
      removeStaleScratch(dir, (m) => logged.push(m));
      assert.deepEqual(fs.readdirSync(dir).sort(), ['e2e-10-d4-s1', `e2e-10-d4-s1.tmp-${process.pid}`]);
      assert.equal(logged.length, 1);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
