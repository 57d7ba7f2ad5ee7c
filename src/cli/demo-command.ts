/**
 * `funnel demo` (what `npm start` runs): builds a generated 100,000-ad catalog (64-d
 * embeddings, targeting, flights around today) into a data directory on first run, then serves
 * it and prints how to call it.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { generateCatalog, type CatalogOptions } from '../catalog/generate';
import { MARKER_FILE } from '../store/catalog-store';
import { runIngest } from './ingest-command';
import { runServe } from './serve-command';

/** Options as commander parses them. */
export interface DemoCommandOptions {
  data: string;
  ads: number;
  port: number;
  host: string;
  metricsPort: number;
  /** As funnel serve's --request-log / --request-log-sample. */
  requestLog?: string;
  requestLogSample?: number;
  /** As funnel serve's --workers; default 1 here (one process to watch while trying things). */
  workers?: number;
  /** As funnel serve's --feature-log. */
  featureLog?: string;
}

/** Writes a generated catalog (JSON Lines) to `file`. */
export async function writeCatalogFile(file: string, options: CatalogOptions): Promise<void> {
  const out = fs.createWriteStream(file);
  let buf = '';
  for (const row of generateCatalog(options)) {
    buf += JSON.stringify(row) + '\n';
    if (buf.length > 1 << 20) {
      if (!out.write(buf)) await new Promise<void>((r) => out.once('drain', () => r()));
      buf = '';
    }
  }
  out.end(buf);
  await new Promise<void>((resolve, reject) => out.on('finish', resolve).on('error', reject));
}

async function buildDemo(dir: string, ads: number): Promise<number> {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'funnel-demo-'));
  const file = path.join(tmp, 'catalog.jsonl');
  try {
    process.stdout.write(`building the demo catalog: ${ads} generated ads, 64-d, into ${dir} (first run only)\n`);
    await writeCatalogFile(file, { count: ads, dim: 64, seed: 7, now: new Date() });
    return await runIngest({ catalog: file, data: dir, replace: false });
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

/** Builds the demo data if missing, then serves it. */
export async function runDemo(opts: DemoCommandOptions): Promise<number> {
  if (!fs.existsSync(path.join(opts.data, MARKER_FILE))) {
    if (fs.existsSync(opts.data)) fs.rmSync(opts.data, { recursive: true, force: true });
    const code = await buildDemo(opts.data, opts.ads);
    if (code !== 0) return code;
  }
  return runServe(
    {
      data: opts.data,
      port: opts.port,
      host: opts.host,
      metricsPort: opts.metricsPort,
      drainTimeoutMs: 10_000,
      requestLog: opts.requestLog,
      requestLogSample: opts.requestLogSample,
      workers: opts.workers ?? 1,
      featureLog: opts.featureLog,
    },
    {
      banner: (r) => {
        const addr = `${r.host}:${r.port}`;
        const dim = r.state.dim ?? 64;
        const emb = Array.from({ length: dim }, (_, i) => (i % 7 === 0 ? 0.1 : 0)).join(',');
        return (
          `\ntry it:\n` +
          `  echo '{"request_id":"r1","user_id":"u1","attributes":{"country":["US"],"platform":["ios"]},"num_results":5,"debug":true}' | npx funnel retrieve --addr ${addr}\n` +
          `  grpcurl -plaintext -d '{"attributes":{"country":{"values":["US"]}},"user_embedding":[${emb.slice(0, 60)}...]}' ${addr} funnel.v1.Retrieval/Retrieve\n` +
          `  grpcurl -plaintext ${addr} grpc.health.v1.Health/Check\n` +
          `Admin is disabled in the demo (no --admin-token-file). Stop with Ctrl-C.\n`
        );
      },
    },
  );
}
