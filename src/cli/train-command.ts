/**
 * `funnel train-ranker`: fits the EarlyRanker's linear pCTR weights to labelled examples (JSON
 * Lines from `funnel examples`), prints train and held-out log-loss, AUC, a calibration table and
 * the weights (or one JSON object with `--json`), and writes the weights as a YAML config file.
 * Exit codes: 0 every line was used; 1 some lines were bad (named on stderr, skipped, counted) or
 * nothing could be fitted; 2 bad usage; 3 I/O problem.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { InvalidArgumentError, type Command } from 'commander';
import { stringify } from 'yaml';
import {
  Dataset,
  evaluate,
  ExampleError,
  FEATURE_NAMES,
  fit,
  FitError,
  isFeatureName,
  isHeldOut,
  parseExample,
  type CalibrationBucket,
  type FeatureName,
  type FitResult,
  type SplitMetrics,
} from '../eval/train-ranker';
import type { RankerWeights } from '../stages/ranking/early-ranker';
import { fixed, formatTable, grouped } from './table';

/** Options as commander parses them. */
export interface TrainCommandOptions {
  examples: string;
  out: string;
  /** L2 strength on feature weights, in rows (default 1). */
  l2?: number;
  /** Share of requests held out (default 0.2). */
  holdout?: number;
  /** Salt of the held-out hash (default 0). */
  seed?: number;
  /** Features the model uses (default all). */
  features?: FeatureName[];
  /** Pipeline whose EarlyRanker the written block is for (default `default`). */
  pipeline?: string;
  json?: boolean;
}

/** Bad lines named on stderr before the rest are only counted. */
const MAX_REPORTED = 100;

/** What the reading pass found. */
interface ReadResult {
  lines: number;
  bad: number;
  train: Dataset;
  holdout: Dataset;
  trainRequests: number;
  holdoutRequests: number;
}

class IoError extends Error {}

async function readExamples(file: string, used: readonly FeatureName[], fraction: number, seed: number): Promise<ReadResult> {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch (err) {
    throw new IoError(`cannot read ${file}: ${(err as Error).message}`);
  }
  if (stat.isDirectory()) throw new IoError(`cannot read ${file}: it is a directory`);
  const input = fs.createReadStream(file, { encoding: 'utf8' });
  let streamError: Error | undefined;
  input.on('error', (err) => (streamError = err));
  const rl = readline.createInterface({ input, crlfDelay: Infinity });
  const out: ReadResult = { lines: 0, bad: 0, train: new Dataset(), holdout: new Dataset(), trainRequests: 0, holdoutRequests: 0 };
  const requests = new Map<string, boolean>();
  try {
    for await (const text of rl) {
      out.lines++;
      if (text.trim() === '') continue;
      let reason: string;
      try {
        const e = parseExample(JSON.parse(text), used);
        let held = requests.get(e.requestId);
        if (held === undefined) {
          held = isHeldOut(e.requestId, fraction, seed);
          requests.set(e.requestId, held);
          if (held) out.holdoutRequests++;
          else out.trainRequests++;
        }
        (held ? out.holdout : out.train).push(e.features, e.label);
        continue;
      } catch (err) {
        if (err instanceof SyntaxError) reason = `bad JSON: ${err.message}`;
        else if (err instanceof ExampleError) reason = err.message;
        else throw err;
      }
      out.bad++;
      if (out.bad <= MAX_REPORTED) process.stderr.write(`${file}:${out.lines}: ${reason}\n`);
    }
  } catch (err) {
    throw new IoError(`cannot read ${file}: ${(err as Error).message}`);
  }
  if (streamError) throw new IoError(`cannot read ${file}: ${streamError.message}`);
  return out;
}

/** The YAML config file holding `weights` as `pipelines.<pipeline>.stages.EarlyRanker.weights`, with a comment header saying how they were made. */
export function weightsConfigYaml(pipeline: string, weights: RankerWeights, header: readonly string[]): string {
  const pipelines: Record<string, unknown> = {};
  // Only `default` exists by default: without it a file for another pipeline would fail default_pipeline's check on its own.
  if (pipeline !== 'default') pipelines.default = {};
  pipelines[pipeline] = { stages: { EarlyRanker: { weights } } };
  const comments = header.map((l) => `# ${l.replace(/[\r\n]+/g, ' ')}`.trimEnd()).join('\n');
  return `${comments}\n${stringify({ pipelines }, { lineWidth: 0 })}`;
}

function writeAtomically(file: string, text: string): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  try {
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw new IoError(`cannot write ${file}: ${(err as Error).message}`);
  }
}

const num = (v: number): number | null => (Number.isFinite(v) ? v : null);

function metricsJson(m: SplitMetrics, requests: number) {
  return {
    rows: m.rows,
    requests,
    positives: m.positives,
    log_loss: num(m.logLoss),
    auc: num(m.auc),
    base_rate: num(m.baseRate),
    mean_pctr: num(m.meanPredicted),
    calibration: m.calibration.map((b) => ({ lo: b.lo, hi: b.hi, count: b.count, mean_pctr: b.meanPredicted, observed_rate: b.observedRate })),
  };
}

function calibrationTable(title: string, buckets: readonly CalibrationBucket[]): string {
  const f = (v: number | null) => (v === null ? '-' : v.toFixed(5));
  return formatTable(
    title,
    [{ header: 'bucket' }, { header: 'count' }, { header: 'pctr_lo' }, { header: 'pctr_hi' }, { header: 'mean_pctr' }, { header: 'observed' }],
    buckets.map((b, i) => [String(i + 1), grouped(b.count), f(b.lo), f(b.hi), f(b.meanPredicted), f(b.observedRate)]),
  );
}

function textReport(r: ReadResult, fitted: FitResult, train: SplitMetrics, held: SplitMetrics | null, opts: Required<Omit<TrainCommandOptions, 'json'>>, used: readonly FeatureName[]): string {
  const split = (name: string, m: SplitMetrics, requests: number) => [
    name,
    grouped(m.rows),
    grouped(requests),
    fixed(m.baseRate, 5),
    fixed(m.meanPredicted, 5),
    fixed(m.logLoss, 5),
    fixed(m.auc, 4),
  ];
  const rows = [split('train', train, r.trainRequests)];
  if (held) rows.push(split('held-out', held, r.holdoutRequests));
  const out = [
    `examples: ${opts.examples}: ${grouped(r.lines)} lines, ${grouped(r.train.size + r.holdout.size)} used, ${grouped(r.bad)} bad`,
    `fit: IRLS, l2 ${opts.l2}, ${fitted.iterations} iterations, ${fitted.converged ? 'converged' : 'NOT converged'}; features ${used.length === FEATURE_NAMES.length ? 'all' : used.join(',')}`,
    '',
    formatTable(
      `log-loss (nats per row) and AUC; held out: requests whose hash of "${opts.seed}:request_id" falls below ${opts.holdout}`,
      [{ header: 'set', align: 'left' }, { header: 'rows' }, { header: 'requests' }, { header: 'base_rate' }, { header: 'mean_pctr' }, { header: 'log_loss' }, { header: 'auc' }],
      rows,
    ),
    '',
    calibrationTable(`calibration (${held ? 'held-out' : 'train'} rows; 10 buckets of equal count by predicted pCTR)`, (held ?? train).calibration),
    '',
    formatTable(
      'weights (std_err: Laplace, from the inverse Hessian; - for a feature not used)',
      [{ header: 'name', align: 'left' }, { header: 'weight' }, { header: 'std_err' }],
      (['bias', ...FEATURE_NAMES] as const).map((name) => [name, fitted.weights[name].toPrecision(6), fixed(fitted.stdErrors[name], 4)]),
    ),
    '',
    `wrote ${opts.out} (pipelines.${opts.pipeline}.stages.EarlyRanker.weights)`,
  ];
  return out.join('\n') + '\n';
}

/** Runs `funnel train-ranker`; resolves to the exit code. */
export async function runTrainRanker(options: TrainCommandOptions): Promise<number> {
  const opts = {
    examples: options.examples,
    out: options.out,
    l2: options.l2 ?? 1,
    holdout: options.holdout ?? 0.2,
    seed: options.seed ?? 0,
    pipeline: options.pipeline ?? 'default',
    features: options.features ?? [...FEATURE_NAMES],
    json: options.json ?? false,
  };
  const used = FEATURE_NAMES.filter((f) => opts.features.includes(f));
  let r: ReadResult;
  try {
    r = await readExamples(opts.examples, used, opts.holdout, opts.seed);
  } catch (err) {
    if (!(err instanceof IoError)) throw err;
    process.stderr.write(`funnel train-ranker: ${err.message}\n`);
    return 3;
  }
  if (r.bad > MAX_REPORTED) process.stderr.write(`funnel train-ranker: ${r.bad} bad lines (the first ${MAX_REPORTED} shown)\n`);
  else if (r.bad > 0) process.stderr.write(`funnel train-ranker: ${r.bad} bad line${r.bad === 1 ? '' : 's'} skipped\n`);

  let fitted: FitResult;
  try {
    fitted = fit(r.train, { l2: opts.l2, features: used });
  } catch (err) {
    if (!(err instanceof FitError)) throw err;
    process.stderr.write(`funnel train-ranker: cannot fit: ${err.message} (${r.train.size} training rows; ${r.holdout.size} held out)\n`);
    return 1;
  }
  if (!fitted.converged) {
    process.stderr.write(`funnel train-ranker: warning: IRLS did not converge in ${fitted.iterations} iterations (separable data? raise --l2)\n`);
  }
  const train = evaluate(fitted.weights, r.train);
  const held = r.holdout.size > 0 ? evaluate(fitted.weights, r.holdout) : null;

  const header = [
    `EarlyRanker weights fitted by funnel train-ranker (L2-regularised logistic regression, IRLS)`,
    `examples: ${path.basename(opts.examples)}: ${r.train.size} train rows, ${r.holdout.size} held-out rows, ${r.bad} bad lines skipped`,
    `l2 ${opts.l2}, holdout ${opts.holdout}, seed ${opts.seed}, features ${used.length === FEATURE_NAMES.length ? 'all' : used.join(',')}`,
    held ? `held-out log-loss ${fixed(held.logLoss, 5)}, AUC ${fixed(held.auc, 4)}` : `train log-loss ${fixed(train.logLoss, 5)}, AUC ${fixed(train.auc, 4)}`,
    ...(opts.pipeline !== 'default' ? ['pipelines.default: {} is there only so that this file is a valid config on its own'] : []),
  ];
  try {
    writeAtomically(opts.out, weightsConfigYaml(opts.pipeline, fitted.weights, header));
  } catch (err) {
    if (!(err instanceof IoError)) throw err;
    process.stderr.write(`funnel train-ranker: ${err.message}\n`);
    return 3;
  }

  if (opts.json) {
    const line = {
      examples: { file: opts.examples, lines: r.lines, used: r.train.size + r.holdout.size, bad: r.bad },
      fit: { method: 'irls', l2: opts.l2, holdout: opts.holdout, seed: opts.seed, features: used, iterations: fitted.iterations, converged: fitted.converged, objective: fitted.objective },
      train: metricsJson(train, r.trainRequests),
      holdout: held ? metricsJson(held, r.holdoutRequests) : null,
      weights: fitted.weights,
      std_errors: fitted.stdErrors,
      pipeline: opts.pipeline,
      out: opts.out,
    };
    process.stdout.write(`${JSON.stringify(line)}\n`);
  } else {
    process.stdout.write(textReport(r, fitted, train, held, opts, used));
  }
  return r.bad > 0 ? 1 : 0;
}

function nonNegativeNumber(v: string): number {
  const n = v.trim() === '' ? NaN : Number(v);
  if (!(n >= 0 && Number.isFinite(n))) throw new InvalidArgumentError('--l2 must be a finite number >= 0');
  return n;
}

function holdoutFraction(v: string): number {
  const n = v.trim() === '' ? NaN : Number(v);
  if (!(n >= 0 && n < 1)) throw new InvalidArgumentError('--holdout must be a number in [0, 1) (0 = no held-out set)');
  return n;
}

function seed(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('--seed must be an integer >= 0');
  return n;
}

function featureList(v: string): FeatureName[] {
  const names = v.split(',').map((s) => s.trim());
  const unknown = names.filter((s) => !isFeatureName(s));
  if (unknown.length > 0) throw new InvalidArgumentError(`unknown feature(s) ${unknown.map((s) => JSON.stringify(s)).join(', ')} (known: ${FEATURE_NAMES.join(', ')})`);
  if (new Set(names).size !== names.length) throw new InvalidArgumentError('a feature is named twice');
  return names as FeatureName[];
}

function pipelineName(v: string): string {
  if (v.trim() === '') throw new InvalidArgumentError('--pipeline must be a non-empty name');
  return v;
}

/** Adds `train-ranker` to the program; a flag that does not parse is a usage error (exit 2). */
export function addTrainRankerCommand(program: Command): void {
  program
    .command('train-ranker')
    .description("fit the EarlyRanker's linear pCTR weights to labelled examples (funnel examples); print log-loss, AUC, calibration; write the weights as a YAML config")
    .requiredOption('--examples <file>', 'JSON Lines of labelled examples')
    .requiredOption('--out <file>', 'YAML config file to write (pipelines.<pipeline>.stages.EarlyRanker.weights)')
    .option(
      '--l2 <lambda>',
      'L2 strength, in units of rows, on each feature weight times its standard deviation (bias not penalised): a Normal(0, 1/lambda) prior on standardised weights',
      nonNegativeNumber,
      1,
    )
    .option('--holdout <fraction>', 'share of requests (by a hash of request_id and --seed) held out for the held-out measures, in [0, 1)', holdoutFraction, 0.2)
    .option('--seed <n>', 'salt of the held-out hash', seed, 0)
    .option('--features <names>', `comma-separated features the model uses (default all: ${FEATURE_NAMES.join(',')}); the others get weight 0`, featureList)
    .option('--pipeline <name>', 'pipeline whose EarlyRanker the written weights are for', pipelineName, 'default')
    .option('--json', 'print one JSON object instead of tables', false)
    .action(async (opts: TrainCommandOptions) => {
      process.exitCode = await runTrainRanker(opts);
    });
}
