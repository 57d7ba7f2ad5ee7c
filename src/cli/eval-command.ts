/**
 * `funnel eval`: funnel recall against the exhaustive reference, offline and in-process, over
 * JSON Lines of RetrieveRequests (proto3 JSON) or a request-log directory; and with `--examples`,
 * the EarlyRanker's pCTR model of each config measured on labelled examples (log-loss, AUC,
 * calibration). Prints tables for people, or one JSON line per (config, pipeline) and report with
 * `--json` (CONTRACT section 3).
 * Exit codes: 0 every request and example line was read; 1 some were bad (named on stderr,
 * skipped, counted); 2 bad usage or config; 3 data directory, I/O or model problem.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readJsonValues } from '../telemetry/feature-log';
import * as v8 from 'node:v8';
import * as vm from 'node:vm';
import pino from 'pino';
import { ConfigError, defaultConfig, loadConfigFile } from '../config/load';
import type { Config } from '../config/schema';
import type { DecodedRetrieve } from '../grpc/codec';
import { retrieveFromJson } from '../grpc/request-json';
import { evaluateExamples, ExampleScoringError, readExampleLines, type ExampleSummary, type ScoredExample } from '../eval/example-eval';
import { evaluateAll, type ConfigDiff, type EvalSummary, type LossTable } from '../eval/funnel-eval';
import { evaluateThroughRoot } from '../eval/root-eval';
import { ServingState } from '../serving/state';
import { DataDirError } from '../store/catalog-store';
import { stopModelWorkers } from '../stages/ranking/onnx-host';
import { readLoggedRequest, readRequestLog } from '../telemetry/request-log';
import { progress } from './progress';
import { fixed, formatTable } from './table';

/** Options as commander parses them. */
export interface EvalCommandOptions {
  /** Needed with `requests`. */
  data?: string;
  requests?: string;
  /** Labelled examples (funnel examples) to score with each config's EarlyRanker model. */
  examples?: string;
  config?: string;
  pipeline?: string[];
  against?: string;
  numResults?: number;
  json?: boolean;
  /** Requests run once through every config, unrecorded, before measuring (default 20). */
  warmup?: number;
  /** A cluster's `funnel root`: the funnel side runs through it over gRPC (`--data` is then a full copy of the catalog). */
  root?: string;
  /** With --root: the bearer token for Explain (loss accounting). */
  adminTokenFile?: string;
}

/** A request line read, or why it could not be. */
interface RequestLine {
  where: string;
  request?: DecodedRetrieve;
  error?: string;
  /** The data sequence a logged request was answered at (request-log lines only). */
  dataSeq?: number;
}

/** Reads the request lines of a JSON Lines file (a bare RetrieveRequest per line, or a request-log line with `request`) or of a request-log directory. */
export async function* readRequests(file: string): AsyncGenerator<RequestLine> {
  if (fs.statSync(file).isDirectory()) {
    for await (const l of readRequestLog(file)) yield { where: `${l.file}:${l.line}`, request: l.request, error: l.error, dataSeq: l.entry?.data_seq };
    return;
  }
  for await (const { where, value: obj, error } of readJsonValues(file)) {
    if (error !== undefined) {
      yield { where, error };
      continue;
    }
    if (obj !== null && typeof obj === 'object' && !Array.isArray(obj) && 'request' in obj) {
      // A request-log line, read as the log reader reads it.
      const l = readLoggedRequest(obj);
      yield { where, request: l.request, error: l.error, dataSeq: l.entry?.data_seq };
      continue;
    }
    try {
      yield { where, request: retrieveFromJson(obj) };
    } catch (err) {
      yield { where, error: (err as Error).message };
    }
  }
}

function loadConfig(file: string | undefined): Config {
  return file ? loadConfigFile(file) : defaultConfig();
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

/** The table for people: one row per (config, pipeline), the loss breakdown, and the diff. */
export function formatReport(summaries: readonly EvalSummary[], diffs: readonly ConfigDiff[], bad: number): string {
  const rows = summaries.map((s) => [
    s.config,
    s.pipeline,
    String(s.requests),
    s.n === null ? 'mixed' : String(s.n),
    fixed(s.recall_at_n, 3),
    fixed(s.recall_p10, 3),
    fixed(s.recall_min, 3),
    fixed(s.ecpm_share, 3),
    fixed(s.mean_ecpm_top_n, 3),
    fixed(s.latency_p50_ms, 2),
    fixed(s.latency_p99_ms, 2),
    fixed(s.cpu_ms_per_request, 3),
    fixed(s.eligible_mean, 0),
  ]);
  const out = [
    formatTable(
      `funnel eval: recall of the exhaustive reference's top N (Filters + EarlyRanker over every eligible ad)${bad ? `; ${bad} bad request lines skipped` : ''}`,
      [
        { header: 'config', align: 'left' },
        { header: 'pipeline', align: 'left' },
        { header: 'requests' },
        { header: 'N' },
        { header: 'recall@N' },
        { header: 'p10' },
        { header: 'min' },
        { header: 'eCPM share' },
        { header: 'eCPM@N' },
        { header: 'p50 ms' },
        { header: 'p99 ms' },
        { header: 'CPU ms/req' },
        { header: 'eligible' },
      ],
      rows,
    ),
  ];
  for (const s of summaries) {
    const lossRows = lossRowsOf(s.loss);
    if (lossRows.length === 0) continue;
    out.push(
      '',
      formatTable(
        `where the reference's top-N ads were lost: ${s.config}, pipeline ${s.pipeline}`,
        [{ header: 'stage', align: 'left' }, { header: 'reason', align: 'left' }, { header: 'ads' }, { header: 'share' }],
        lossRows,
      ),
    );
  }
  for (const { a, b, pipeline, d } of diffs) {
    out.push('', `${b} against ${a}, pipeline ${pipeline}: overlap@N ${fixed(d.overlap_at_n, 3)}`);
    if (d.advertiser_share_moves.length > 0) {
      out.push(
        formatTable(
          'advertisers whose share of top-N slots moved most',
          [{ header: 'advertiser', align: 'left' }, { header: 'share before' }, { header: 'share after' }, { header: 'change' }],
          d.advertiser_share_moves.map((m) => [m.advertiser_id, pct(m.share_a), pct(m.share_b), `${m.share_b >= m.share_a ? '+' : ''}${(100 * (m.share_b - m.share_a)).toFixed(1)} pt`]),
        ),
      );
    }
  }
  return out.join('\n') + '\n';
}

function lossRowsOf(loss: LossTable): string[][] {
  const flat: [string, string, number][] = [];
  for (const [stage, reasons] of Object.entries(loss)) for (const [r, k] of Object.entries(reasons)) flat.push([stage, r, k]);
  const total = flat.reduce((a, [, , k]) => a + k, 0);
  flat.sort((a, b) => b[2] - a[2]);
  return flat.map(([stage, r, k]) => [stage, r, String(k), pct(k / total)]);
}

/** Rounds every number of a summary for the JSON line (6 significant decimals). */
function jsonLine(s: EvalSummary | Record<string, unknown>, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ ...s, ...extra }, (_k, v: unknown) => (typeof v === 'number' && !Number.isInteger(v) ? (Number.isFinite(v) ? Number(v.toFixed(6)) : null) : v));
}

/** Makes `globalThis.gc` available (as node --expose-gc does), so the evaluator can collect the reference's garbage outside timed runs. */
function exposeGc(): void {
  if ((globalThis as { gc?: unknown }).gc) return;
  v8.setFlagsFromString('--expose-gc');
  (globalThis as { gc?: unknown }).gc = vm.runInNewContext('gc');
}

/** Runs `funnel eval`; resolves to the exit code. */
export async function runEval(opts: EvalCommandOptions): Promise<number> {
  const err = (m: string) => process.stderr.write(`funnel eval: ${m}\n`);
  exposeGc();
  let configs: { label: string; config: Config }[];
  try {
    configs = [{ label: opts.config ? path.basename(opts.config) : 'builtin', config: loadConfig(opts.config) }];
    if (opts.against) configs.push({ label: path.basename(opts.against), config: loadConfig(opts.against) });
  } catch (e) {
    if (e instanceof ConfigError) {
      err(e.message);
      return 2;
    }
    throw e;
  }
  if (configs.length === 2 && configs[0].label === configs[1].label) configs[1].label += ' (against)';
  for (const { label, config } of configs) {
    for (const p of opts.pipeline ?? []) {
      if (!Object.prototype.hasOwnProperty.call(config.pipelines, p)) {
        err(`--pipeline ${p}: config ${label} has no such pipeline (have: ${Object.keys(config.pipelines).join(', ')})`);
        return 2;
      }
    }
  }
  if (!opts.requests && !opts.examples) {
    err('give --requests (funnel recall), --examples (pCTR model on labelled examples), or both');
    return 2;
  }
  if (opts.requests && !opts.data) {
    err('--requests needs --data');
    return 2;
  }
  for (const [flag, file] of [['--requests', opts.requests], ['--examples', opts.examples]] as const) {
    if (file && !fs.existsSync(file)) {
      err(`${flag} ${file}: no such file or directory`);
      return 3;
    }
  }
  let exampleCode = 0;
  if (opts.examples) {
    exampleCode = await runExampleEval(opts, opts.examples, configs, err);
    if (exampleCode > 1 || !opts.requests) return exampleCode;
  }
  if (opts.root) {
    if (opts.against || opts.examples) {
      err('--root measures one cluster: --against and --examples go without it');
      return 2;
    }
    let token: string | undefined;
    if (opts.adminTokenFile) {
      try {
        token = fs.readFileSync(opts.adminTokenFile, 'utf8').trim();
      } catch (e) {
        err(`cannot read --admin-token-file ${opts.adminTokenFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
        return 2;
      }
    }
    return runRequestEval(opts, opts.requests!, opts.data!, configs, err, { addr: opts.root, token });
  }
  if (opts.adminTokenFile) {
    err('--admin-token-file goes with --root');
    return 2;
  }
  const requestCode = await runRequestEval(opts, opts.requests!, opts.data!, configs, err);
  return Math.max(exampleCode, requestCode);
}

/** The example report for people: one row per (config, pipeline), the differences, then each calibration table. */
export function formatExampleReport(summaries: readonly ExampleSummary[], bad: number): string {
  const f = (x: number, d: number) => (Number.isFinite(x) ? x.toFixed(d) : '-');
  const out = [
    formatTable(
      `funnel eval --examples: the EarlyRanker's pCTR on labelled examples${bad ? `; ${bad} bad example lines skipped` : ''}`,
      [
        { header: 'config', align: 'left' },
        { header: 'pipeline', align: 'left' },
        { header: 'model', align: 'left' },
        { header: 'examples' },
        { header: 'clicks' },
        { header: 'log-loss' },
        { header: 'AUC' },
        { header: 'mean pCTR' },
        { header: 'observed' },
      ],
      summaries.map((s) => [s.config, s.pipeline, s.model, String(s.examples), String(s.clicks), f(s.log_loss, 5), f(s.auc, 4), f(s.mean_pctr, 5), f(s.base_rate, 5)]),
    ),
  ];
  const first = summaries.length > 0 ? summaries[0].config : '';
  for (const b of summaries) {
    if (b.config === first) continue;
    const a = summaries.find((s) => s.config === first && s.pipeline === b.pipeline);
    if (!a) continue;
    const sign = (x: number, d: number) => (Number.isFinite(x) ? `${x >= 0 ? '+' : ''}${x.toFixed(d)}` : '-');
    out.push(
      '',
      `${b.config} against ${a.config}, pipeline ${b.pipeline}: log-loss ${sign(b.log_loss - a.log_loss, 5)} (${b.log_loss < a.log_loss ? 'better' : b.log_loss > a.log_loss ? 'worse' : 'equal'}), ` +
        `AUC ${sign(b.auc - a.auc, 4)}, mean pCTR ${sign(b.mean_pctr - a.mean_pctr, 5)}`,
    );
  }
  for (const s of summaries) {
    out.push(
      '',
      formatTable(
        `calibration: ${s.config}, pipeline ${s.pipeline} (equal-count buckets by predicted pCTR)`,
        [{ header: 'bucket' }, { header: 'pCTR from' }, { header: 'pCTR to' }, { header: 'examples' }, { header: 'mean pCTR' }, { header: 'observed' }],
        s.calibration.map((c, i) => [String(i + 1), c.lo === null ? '-' : c.lo.toFixed(5), c.hi === null ? '-' : c.hi.toFixed(5), String(c.count), c.meanPredicted === null ? '-' : c.meanPredicted.toFixed(5), c.observedRate === null ? '-' : c.observedRate.toFixed(5)]),
      ),
    );
  }
  return out.join('\n') + '\n';
}

/** `--examples`: reads the examples once, scores them under every config; resolves to the exit code. */
async function runExampleEval(opts: EvalCommandOptions, file: string, configs: { label: string; config: Config }[], err: (m: string) => void): Promise<number> {
  const examples: ScoredExample[] = [];
  let bad = 0;
  try {
    for await (const line of readExampleLines(file)) {
      if (line.example) examples.push(line.example);
      else {
        bad++;
        if (bad <= 100) err(`${line.where}: ${line.error}`);
      }
    }
  } catch (e) {
    err(`--examples ${file}: ${(e as Error).message}`);
    return 3;
  }
  if (bad > 100) err(`... and ${bad - 100} more bad lines`);
  if (examples.length === 0) {
    err(`--examples ${file}: no examples to score`);
    return bad > 0 ? 1 : 3;
  }
  const onnx = configs.some(({ config }) => Object.values(config.pipelines).some((p) => p.stages.EarlyRanker.model.kind !== 'linear'));
  try {
    const { summaries, missing } = await evaluateExamples(configs, examples, opts.pipeline ?? []);
    for (const m of missing) err(`config ${m.config} has no pipeline ${m.pipeline}: its ${m.examples} examples were not scored under it`);
    if (opts.json) {
      for (const s of summaries) {
        const { calibration: _c, ...rest } = s;
        process.stdout.write(jsonLine(rest as unknown as Record<string, unknown>) + '\n');
      }
    } else {
      process.stdout.write(formatExampleReport(summaries, bad));
    }
    return bad > 0 || missing.length > 0 ? 1 : 0;
  } catch (e) {
    if (e instanceof ExampleScoringError) {
      err(e.message);
      return 3;
    }
    throw e;
  } finally {
    if (onnx) await stopModelWorkers();
  }
}

/** `--requests`: funnel recall against the exhaustive reference; resolves to the exit code. */
async function runRequestEval(
  opts: EvalCommandOptions,
  requestsPath: string,
  data: string,
  configs: { label: string; config: Config }[],
  err: (m: string) => void,
  /** `--root`: every request goes through the cluster's root, against the capped reference over `data` (a full copy of the catalog). */
  root?: { addr: string; token?: string },
): Promise<number> {
  let state: ServingState;
  try {
    state = await ServingState.open(data, configs[0].config, pino({ level: 'warn' }, pino.destination(2)));
  } catch (e) {
    err(e instanceof DataDirError ? e.message : `cannot open ${data}: ${(e as Error).message}`);
    return 3;
  }
  try {
    // Requests are read once into memory: every config and pipeline runs over the same ones.
    const requests: DecodedRetrieve[] = [];
    let bad = 0;
    let otherSeq = 0;
    for await (const line of readRequests(requestsPath)) {
      if (line.request) {
        requests.push(line.request);
        if (line.dataSeq !== undefined && line.dataSeq !== state.seq) otherSeq++;
      } else {
        bad++;
        if (bad <= 100) err(`${line.where}: ${line.error}`);
      }
    }
    if (bad > 100) err(`... and ${bad - 100} more bad lines`);
    // Not an error: replaying yesterday's traffic on today's data is a normal use. But recall
    // and loss then describe this data, not what the logged answers saw.
    if (otherSeq > 0) err(`note: ${otherSeq} of ${requests.length} logged requests were answered at another data sequence than this directory's (${state.seq})`);
    const pipelines = opts.pipeline && opts.pipeline.length > 0 ? opts.pipeline : [undefined];
    const bar = progress('eval', 'requests');
    const onInvalid = (i: number, details: string, count: number) => {
      if (count <= 100) err(`request ${i + 1}: ${details}`);
    };
    if (root) {
      const r = await evaluateThroughRoot(state, configs[0].config, requests, {
        ...root,
        pipelines,
        numResults: opts.numResults,
        onProgress: (done, total) => bar.update(done, total),
        onInvalid,
      });
      bar.stop();
      if (opts.json) for (const s of r.summaries) process.stdout.write(jsonLine(s, { via: 'root', reference: 'capped' }) + '\n');
      else process.stdout.write(formatReport(r.summaries, [], bad + r.invalid + r.failed));
      return bad + r.invalid + r.failed > 0 ? 1 : 0;
    }
    const run = await evaluateAll(state, configs, requests, {
      pipelines,
      numResults: opts.numResults,
      warmup: opts.warmup,
      onProgress: (done, total) => bar.update(done, total),
      onInvalid,
    });
    bar.stop();
    const { summaries, diffs } = run;
    const invalid = run.invalid;
    if (opts.json) {
      for (const s of summaries) {
        const d = diffs.find((x) => x.pipeline === s.pipeline && s.config === x.b);
        process.stdout.write(jsonLine(s, d ? { against: d.a, ...d.d } : {}) + '\n');
      }
    } else {
      process.stdout.write(formatReport(summaries, diffs, bad + invalid));
    }
    return bad + invalid > 0 ? 1 : 0;
  } finally {
    await state.close();
  }
}
