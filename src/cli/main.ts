#!/usr/bin/env node
/**
 * The `funnel` command line (CONTRACT section 3).
 * Exit codes: 0 success; 1 bad input data (catalog rows, example lines); 2 bad usage; 3 data directory or I/O problem.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { runIngest } from './ingest-command';
import { runStats } from './stats-command';
import { defaultWorkers, runServe } from './serve-command';
import { runRetrieve } from './retrieve-command';
import { parseAdIds, runExplain } from './explain-command';
import { runDemo, writeCatalogFile } from './demo-command';
import { runRoot } from './root-command';
import { runConfigPrint, runConfigValidate } from './config-command';
import { runEval } from './eval-command';
import { addTrainRankerCommand } from './train-command';
import { runExamples } from './examples-command';

/** Exit codes of the command line. */
export const EXIT = { ok: 0, badData: 1, usage: 2, dataDir: 3 } as const;

function port(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('a port must be an integer in 0..65535 (0 = any free port)');
  return n;
}

function positiveInt(name: string, max: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1 || n > max) throw new InvalidArgumentError(`${name} must be an integer in 1..${max}`);
    return n;
  };
}

function adIds(v: string, previous: string[] | undefined): string[] {
  try {
    return parseAdIds(v, previous);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

function fraction(name: string) {
  return (v: string): number => {
    const n = v.trim() === '' ? NaN : Number(v);
    if (!(n >= 0 && n <= 1)) throw new InvalidArgumentError(`${name} must be a number in [0, 1]`);
    return n;
  };
}

function nonNegativeInt(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${name} must be an integer >= 0`);
    return n;
  };
}

/** Builds the program; `main` parses argv with it. */
export function buildProgram(): Command {
  const program = new Command('funnel')
    .description('ads candidate retrieval: ingest catalogs, inspect data directories, serve the funnel')
    .showHelpAfterError()
    .exitOverride();
  program
    .command('ingest')
    .description('create or update a data directory (LMDB store and ANN index) from a catalog JSONL file')
    .requiredOption('--catalog <file>', 'catalog file, one JSON ad per line')
    .option('--data <dir>', 'data directory (created if missing); or, for a sharded cluster, --nats and --shards')
    .option('--nats <url>', 'publish the file to the cluster\'s JetStream stream instead (validated in full first; each shard applies its part at once)')
    .option('--shards <n>', 'with --nats: the number of shards N (an ad goes to shard fnv1a32(ad_id) mod N)', positiveInt('--shards', 1024))
    .option('--config <file>', 'with --nats: YAML config whose cluster section names the stream and subjects (default: built-in)')
    .option('--replace', 'make the directory (or every shard) hold exactly the file (delete ads absent from it)', false)
    .addOption(new Option('--metric <metric>', 'ANN metric for a new or replaced directory').choices(['ip', 'cos', 'l2']))
    .option('--ann-m <n>', 'HNSW degree M for a new or replaced directory', positiveInt('--ann-m', 128))
    .option('--ann-ef-construction <n>', 'HNSW efConstruction for a new or replaced directory', positiveInt('--ann-ef-construction', 4096))
    .option('--threads <n>', 'threads for the ANN build (default: all cores)', positiveInt('--threads', 256))
    .action(async (opts) => {
      process.exitCode = await runIngest(opts);
    });
  program
    .command('generate')
    .description('write a generated catalog (JSON Lines, as the demo\'s) to a file: for trials and the compose cluster profile')
    .requiredOption('--out <file>', 'catalog file to write')
    .option('--ads <n>', 'ads to generate', positiveInt('--ads', 100_000_000), 100_000)
    .option('--dim <n>', 'embedding length', positiveInt('--dim', 4096), 64)
    .option('--seed <n>', 'random seed', positiveInt('--seed', 2 ** 31), 7)
    .action(async (opts: { out: string; ads: number; dim: number; seed: number }) => {
      try {
        await writeCatalogFile(opts.out, { count: opts.ads, dim: opts.dim, seed: opts.seed, now: new Date() });
        process.stdout.write(`wrote ${opts.ads} generated ads (${opts.dim}-d, seed ${opts.seed}) to ${opts.out}\n`);
      } catch (err) {
        process.stderr.write(`funnel generate: ${(err as Error).message}\n`);
        process.exitCode = 3;
      }
    });
  program
    .command('stats')
    .description('print counts (ads, active, by category), dimension and index sizes of a data directory')
    .requiredOption('--data <dir>', 'data directory')
    .option('--json', 'print one JSON object instead of text', false)
    .action(async (opts) => {
      process.exitCode = await runStats(opts);
    });
  program
    .command('serve')
    .description('serve funnel.v1.Retrieval and funnel.v1.Admin (plus health and reflection) on a data directory')
    .requiredOption('--data <dir>', 'data directory (made by funnel ingest)')
    .option('--config <file>', 'YAML stage config (default: built-in defaults)')
    .option('--port <n>', 'gRPC port (0 = any free port)', port, 50051)
    .option('--host <host>', 'address to bind (0.0.0.0 for every interface)', '127.0.0.1')
    .option('--metrics-port <n>', 'port of the Prometheus /metrics endpoint (0 = off)', port, 9464)
    .option('--admin-token-file <file>', 'file holding the bearer token Admin calls must present (without it, and without mTLS, Admin is refused)')
    .option('--tls-cert <file>', 'server certificate chain (PEM); with --tls-key turns on TLS')
    .option('--tls-key <file>', 'server private key (PEM)')
    .option('--tls-client-ca <file>', 'CA (PEM) client certificates must chain to: mutual TLS, which also authorises Admin')
    .option('--drain-timeout-ms <n>', 'longest SIGTERM waits for in-flight calls', positiveInt('--drain-timeout-ms', 3_600_000), 10_000)
    .option('--request-log <dir>', 'write a sampled log of Retrieve requests here (JSON Lines, rotated) for funnel eval')
    .option('--request-log-sample <r>', 'share of Retrieves logged, 0..1 (default 0.01; needs --request-log)', fraction('--request-log-sample'))
    .option('--feature-log <dir>', "write the EarlyRanker's features of sampled Retrieves here (JSON Lines, rotated; shares: config feature_log) for funnel examples")
    .option('--workers <n>', `serving processes on the port over the data directory (default: the available cores, ${defaultWorkers()} here; 1 = a single process; always 1 with --nats)`, positiveInt('--workers', 1024))
    .option('--nats <url>', 'NATS server URL(s), comma-separated: serve as a replica of --shard, applying its writes from the JetStream stream (config cluster)')
    .option('--shard <I/N>', 'with --nats: the shard this replica serves (0-based I of N; an ad belongs to shard fnv1a32(ad_id) mod N)')
    .action(async (opts) => {
      process.exitCode = await runServe(opts);
    });
  program
    .command('root')
    .description('serve Retrieval and Admin in front of a sharded cluster: fan out to one replica per shard, merge by score, diversify, route writes')
    .requiredOption('--shards <list>', 'the shards\' replicas: "H:P,H:P;H:P,H:P" (shards by ";", replicas of a shard by ",", shard 0 first)')
    .option('--nats <url>', 'NATS server URL(s) of the cluster\'s stream: a GetAds then sees every write in the stream when it arrived (writes still go through the shards\' replicas)')
    .option('--port <n>', 'gRPC port (0 = any free port)', port, 50051)
    .option('--host <host>', 'address to bind (0.0.0.0 for every interface)', '127.0.0.1')
    .option('--metrics-port <n>', 'port of the Prometheus /metrics endpoint (0 = off)', port, 9464)
    .option('--admin-token-file <file>', 'bearer token Admin and Explain calls must present (checked here, and by the shards, to which the caller\'s authorization is passed)')
    .option('--config <file>', 'YAML config (limits, root section, pipelines\' Diversifier caps); watched and re-read on SIGHUP')
    .option('--drain-timeout-ms <n>', 'longest SIGTERM waits for in-flight calls', positiveInt('--drain-timeout-ms', 3_600_000), 10_000)
    .action(async (opts) => {
      process.exitCode = await runRoot(opts);
    });
  program
    .command('retrieve')
    .description('call Retrieve with a JSON request (file or stdin) and print the JSON answer')
    .option('--addr <host:port>', 'server address', '127.0.0.1:50051')
    .option('--request <file>', 'JSON request file (default: stdin)')
    .option('--timeout-ms <n>', 'deadline of the call', positiveInt('--timeout-ms', 3_600_000), 5000)
    .option('--tls-ca <file>', 'CA (PEM) to verify a TLS server with')
    .option('--tls-cert <file>', 'client certificate (PEM) for mutual TLS')
    .option('--tls-key <file>', 'client key (PEM) for mutual TLS')
    .action(async (opts) => {
      process.exitCode = await runRetrieve(opts);
    });
  program
    .command('explain')
    .description('call Explain (Admin credentials) with a JSON request and ad ids; print where each ad left the funnel')
    .option('--addr <host:port>', 'server address', '127.0.0.1:50051')
    .requiredOption('--request <file>', 'JSON request file (- for stdin)')
    .requiredOption('--ad-ids <ids>', 'comma-separated ad ids to explain (may be repeated)', adIds)
    .option('--admin-token-file <file>', 'file holding the bearer token (without it, only mutual TLS authorises the call)')
    .option('--json', 'print the ExplainResponse as JSON instead of a table', false)
    .option('--timeout-ms <n>', 'deadline of the call', positiveInt('--timeout-ms', 3_600_000), 5000)
    .option('--tls-ca <file>', 'CA (PEM) to verify a TLS server with')
    .option('--tls-cert <file>', 'client certificate (PEM) for mutual TLS')
    .option('--tls-key <file>', 'client key (PEM) for mutual TLS')
    .action(async (opts) => {
      process.exitCode = await runExplain(opts);
    });
  program
    .command('demo')
    .description('build a generated demo catalog on first run, then serve it (what npm start runs)')
    .option('--data <dir>', 'demo data directory', '.funnel-demo')
    .option('--ads <n>', 'ads in the generated catalog', positiveInt('--ads', 10_000_000), 100_000)
    .option('--port <n>', 'gRPC port', port, 50051)
    .option('--host <host>', 'address to bind', '127.0.0.1')
    .option('--metrics-port <n>', 'port of the Prometheus /metrics endpoint (0 = off)', port, 9464)
    .option('--request-log <dir>', 'write a sampled log of Retrieve requests here (as funnel serve)')
    .option('--request-log-sample <r>', 'share of Retrieves logged, 0..1 (default 0.01; needs --request-log)', fraction('--request-log-sample'))
    .option('--workers <n>', 'serving processes (as funnel serve; default 1 for the demo)', positiveInt('--workers', 1024))
    .option('--feature-log <dir>', "write the EarlyRanker's features of sampled Retrieves here (as funnel serve)")
    .action(async (opts) => {
      process.exitCode = await runDemo(opts);
    });
  program
    .command('eval')
    .description("funnel recall offline: requests through the funnel and through the exhaustive reference (Filters + EarlyRanker over every eligible ad); with --examples, each config's pCTR model on labelled examples; tables, or --json lines")
    .option('--data <dir>', 'data directory (made by funnel ingest; needed with --requests)')
    .option('--requests <path>', 'JSON Lines of RetrieveRequest (proto3 JSON), or a request-log directory (funnel serve --request-log)')
    .option('--examples <file>', "labelled examples (funnel examples): log-loss, AUC and calibration of each config's EarlyRanker pCTR model")
    .option('--config <file>', 'YAML stage config (default: built-in defaults)')
    .option('--pipeline <name>', 'run every request through this pipeline (repeat for several; default: as each request routes)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--against <file>', 'a second config run over the same requests; prints the difference')
    .option('--num-results <n>', "N: results per request (default: each request's num_results, else the config's default)", positiveInt('--num-results', 100_000))
    .option('--json', 'one JSON line per (config, pipeline) instead of a table', false)
    .option('--warmup <n>', 'requests run once through every config, unrecorded, before measuring', nonNegativeInt('--warmup'), 20)
    .option('--root <addr>', "a sharded cluster's funnel root (HOST:PORT): requests go through it over gRPC; --data is then a full copy of the same catalog, for the reference")
    .option('--admin-token-file <file>', 'with --root: bearer token for Explain, which says where each lost ad was lost')
    .action(async (opts) => {
      process.exitCode = await runEval(opts);
    });
  addTrainRankerCommand(program);
  program
    .command('examples')
    .description('labelled training examples: feature-log rows (funnel serve --feature-log) joined with events on (request_id, ad_id); JSON Lines')
    .requiredOption('--log <path>', 'feature-log directory (its features-*.jsonl files), or one such file')
    .requiredOption('--events <file>', 'JSON Lines of events: {"ad_id","type":"IMPRESSION"|"CLICK","timestamp_ms","request_id"}')
    .requiredOption('--out <file>', 'where the examples go (- for stdout); written beside itself and renamed once complete')
    .action(async (opts) => {
      process.exitCode = await runExamples(opts);
    });
  const config = program.command('config').description('check and show stage configs');
  config
    .command('validate')
    .description('validate a YAML stage config; exit 0 when valid, 1 with every problem on stderr otherwise')
    .argument('<file>', 'config file')
    .action(async (file: string) => {
      process.exitCode = await runConfigValidate(file);
    });
  config
    .command('print')
    .description('print the effective config (every default filled in) as YAML')
    .option('--config <file>', 'config file (default: the built-in defaults)')
    .action(async (opts: { config?: string }) => {
      process.exitCode = await runConfigPrint(opts.config);
    });
  return program;
}

/** Runs the command line on `argv` (process.argv form) and resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : EXIT.ok;
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    process.stderr.write(`funnel: ${(err as Error).message}\n`);
    return EXIT.dataDir;
  }
}

if (require.main === module) {
  main(process.argv).then((code) => {
    process.exitCode = code;
  });
}
