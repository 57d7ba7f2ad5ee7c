/** `funnel ingest`: runs the ingest with progress and prints the outcome or every bad row. */
import { DataDirError } from '../store/catalog-store';
import { IngestError, ingestCatalog } from '../store/ingest';
import { progress, type Progress } from './progress';
import { publishCatalog } from '../cluster/publish-catalog';
import { ConfigError, defaultConfig, loadConfigFile } from '../config/load';
import { defaultLogger } from '../main';

/** Options as commander parses them. */
export interface IngestCommandOptions {
  catalog: string;
  data?: string;
  nats?: string;
  shards?: number;
  config?: string;
  replace: boolean;
  metric?: 'ip' | 'cos' | 'l2';
  annM?: number;
  annEfConstruction?: number;
  threads?: number;
}

/** Runs `funnel ingest`; resolves to the exit code (0 ok, 1 bad rows, 3 data directory or I/O). */
export async function runIngest(opts: IngestCommandOptions): Promise<number> {
  if (Boolean(opts.data) === Boolean(opts.nats)) {
    process.stderr.write('funnel ingest: give either --data DIR or --nats URL --shards N\n');
    return 2;
  }
  if (opts.nats && opts.shards === undefined) {
    process.stderr.write('funnel ingest: --nats needs --shards N\n');
    return 2;
  }
  if (!opts.nats && (opts.shards !== undefined || opts.config !== undefined)) {
    process.stderr.write('funnel ingest: --shards and --config go with --nats\n');
    return 2;
  }
  let current: Progress | undefined;
  let currentName = '';
  const use = (name: string, unit: string) => {
    if (currentName !== name) {
      current?.stop();
      current = progress(name, unit);
      currentName = name;
    }
    return current!;
  };
  try {
    const ann: Record<string, unknown> = {};
    if (opts.metric) ann.metric = opts.metric;
    if (opts.annM) ann.M = opts.annM;
    if (opts.annEfConstruction) ann.efConstruction = opts.annEfConstruction;
    if (opts.nats) {
      const config = opts.config ? loadConfigFile(opts.config) : defaultConfig();
      const p = await publishCatalog(opts.catalog, {
        nats: opts.nats,
        shards: opts.shards!,
        cluster: config.cluster,
        replace: opts.replace,
        ann,
        log: defaultLogger(),
        progress: {
          read: (bytes, total, rows) => use('read', 'bytes').update(bytes, total, rows),
          publish: (done, total) => use('publish', 'rows').update(done, total),
        },
      });
      current?.stop();
      process.stdout.write(
        `published ${p.rows} rows from ${opts.catalog} to ${opts.nats} (stream ${config.cluster.stream}) for ${opts.shards} shards ` +
          `(${p.perShard.join(' / ')} rows): ingest ${p.ingest}, ${p.messages} messages, ${(p.bytes / 2 ** 20).toFixed(1)} MiB; ` +
          `last stream seq ${p.lastSeq} (use it as min_seq)\n` +
          `time: validate ${p.seconds.validate.toFixed(1)}s, publish ${p.seconds.publish.toFixed(1)}s, total ${p.seconds.total.toFixed(1)}s\n`,
      );
      return 0;
    }
    const r = await ingestCatalog(opts.catalog, opts.data!, {
      replace: opts.replace,
      ann,
      threads: opts.threads,
      progress: {
        read: (bytes, total, rows) => use('read', 'bytes').update(bytes, total, rows),
        phase: (name, done, total) => use(name, name === 'index' ? 'vectors' : 'rows').update(done, total),
      },
    });
    current?.stop();
    const w = r.write;
    process.stdout.write(
      `ingested ${r.rows} rows from ${opts.catalog} into ${opts.data}: ${w.inserted} new, ${w.updated} updated, ` +
        `${w.removed} removed (seq ${w.seq})\n` +
        `ann index: ${r.ann.how}${r.ann.reason ? ` (${r.ann.reason})` : ''}, ${r.ann.size} vectors, ` +
        `${(r.ann.bytes / 2 ** 20).toFixed(1)} MiB\n` +
        `time: read+validate ${r.seconds.read.toFixed(1)}s, commit ${r.seconds.commit.toFixed(1)}s, ` +
        `index ${r.seconds.index.toFixed(1)}s, total ${r.seconds.total.toFixed(1)}s ` +
        `(${Math.round(r.rows / Math.max(r.seconds.total, 1e-3))} rows/s)\n`,
    );
    return 0;
  } catch (err) {
    current?.stop();
    if (err instanceof IngestError) {
      for (const e of err.errors) process.stderr.write(`${err.file}:${e.line}: ${e.field}: ${e.reason}\n`);
      const more = err.total - new Set(err.errors.map((e) => e.line)).size;
      if (more > 0) process.stderr.write(`... and ${more} more bad rows\n`);
      process.stderr.write(`funnel ingest: ${err.message}\n`);
      return 1;
    }
    if (err instanceof ConfigError) {
      process.stderr.write(`funnel ingest: ${err.message}\n`);
      return 2;
    }
    if (err instanceof DataDirError) {
      process.stderr.write(`funnel ingest: ${err.message}\n`);
      return 3;
    }
    process.stderr.write(`funnel ingest: ${(err as Error).message}\n`);
    return 3;
  }
}
