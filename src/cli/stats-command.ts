/** `funnel stats`: counts, dimension and index sizes of a data directory. */
import * as fs from 'node:fs';
import { HnswIndex } from '../native/index';
import { annPath } from '../store/ann-sync';
import { CatalogStore } from '../store/catalog-store';

/** What `funnel stats` reports. */
export interface DataStats {
  dir: string;
  seq: number;
  dim: number | null;
  ads: number;
  active: number;
  paused: number;
  untargeted: number;
  byCategory: Record<string, number>;
  lmdbBytes: number;
  ann: { file: string; fileBytes: number; vectors: number; tag: number; current: boolean; metric: string; M: number } | null;
}

/** Reads the statistics of the data directory `dir` (throws DataDirError when it is not one). */
export async function collectStats(dir: string): Promise<DataStats> {
  const store = CatalogStore.open(dir);
  try {
    const byCategory: Record<string, number> = {};
    let active = 0;
    let untargeted = 0;
    let ads = 0;
    for (const ad of store.ads()) {
      ads++;
      if (ad.status === 'active') active++;
      if (ad.targeting === null) untargeted++;
      byCategory[ad.category] = (byCategory[ad.category] ?? 0) + 1;
    }
    let ann: DataStats['ann'] = null;
    const file = annPath(store);
    if (fs.existsSync(file)) {
      const ix = HnswIndex.load(file, { mmap: true, verify: false });
      ann = { file, fileBytes: fs.statSync(file).size, vectors: ix.size, tag: ix.tag, current: ix.tag === store.seq, metric: ix.metric, M: ix.M };
    }
    return { dir: store.dir, seq: store.seq, dim: store.dim, ads, active, paused: ads - active, untargeted, byCategory, lmdbBytes: store.lmdbBytes(), ann };
  } finally {
    await store.close();
  }
}

/** Runs `funnel stats`; resolves to the exit code. */
export async function runStats(opts: { data: string; json: boolean }): Promise<number> {
  try {
    const s = await collectStats(opts.data);
    if (opts.json) {
      process.stdout.write(JSON.stringify(s) + '\n');
      return 0;
    }
    const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
    const lines = [
      `data directory  ${s.dir}`,
      `sequence        ${s.seq}`,
      `dimension       ${s.dim ?? '-'}`,
      `ads             ${s.ads} (${s.active} active, ${s.paused} paused, ${s.untargeted} untargeted)`,
      `lmdb            ${mib(s.lmdbBytes)}`,
      s.ann
        ? `ann index       ${s.ann.vectors} vectors, ${s.ann.metric}, M=${s.ann.M}, ${mib(s.ann.fileBytes)}, tag ${s.ann.tag}${s.ann.current ? '' : ' (behind: catches up on next open)'}`
        : 'ann index       none (built on next ingest or serve)',
      'by category',
      ...Object.entries(s.byCategory)
        .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
        .map(([c, n]) => `  ${c.padEnd(24)} ${n}`),
    ];
    process.stdout.write(lines.join('\n') + '\n');
    return 0;
  } catch (err) {
    process.stderr.write(`funnel stats: ${(err as Error).message}\n`);
    return 3;
  }
}
