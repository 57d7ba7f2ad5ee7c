/**
 * `npm run bench:recall`: funnel recall and cost of the pipeline before the ranker walk (prior
 * order, Ann k 100 / ef 128, Targeting k 100, source weights 0.2 / 0.1) against today's default,
 * in one run over one generated catalog (cached under bench/.cache) and one set of generated
 * requests, through funnel eval's evaluator: configs take turns request by request after a
 * warm-up. Prints eval's table, then one JSON line per config.
 */
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { generateRequests, generateUserEmbeddings } from '../src/catalog/generate';
import { formatReport } from '../src/cli/eval-command';
import { defaultConfig, parseConfigObject } from '../src/config/load';
import { blankRetrieve, type DecodedRetrieve } from '../src/grpc/codec';
import { evaluateAll } from '../src/eval/funnel-eval';
import { ServingState } from '../src/serving/state';
import { ensureGeneratedDataDir, type CatalogShape } from './lib/e2e-data';

/** The default pipeline as it was before `Targeting.order: ranker` (the baseline of the issue). */
export const BEFORE_CONFIG = {
  version: 'before-ranker-walk',
  pipelines: {
    default: {
      stages: {
        Ann: { k: 100, ef: 128 },
        Targeting: { k: 100, order: 'prior' },
        EarlyRanker: { weights: { source_ann: 0.2, source_popularity: 0.1 } },
      },
    },
  },
};

const USAGE = `usage: npm run bench:recall -- [--ads 100000] [--shape mixture|clustered] [--dim 64] [--seed 7]
                               [--requests 300] [--num-results 50] [--warmup 30]`;

function positive(name: string, v: string | undefined, def: number, min = 1): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}`);
  return n;
}

async function main(): Promise<number> {
  let opts;
  try {
    const { values } = parseArgs({
      options: {
        ads: { type: 'string' },
        shape: { type: 'string' },
        dim: { type: 'string' },
        seed: { type: 'string' },
        requests: { type: 'string' },
        'num-results': { type: 'string' },
        warmup: { type: 'string' },
        help: { type: 'boolean' },
      },
    });
    if (values.help) {
      process.stdout.write(USAGE + '\n');
      return 0;
    }
    const shape = (values.shape ?? 'mixture') as CatalogShape;
    if (shape !== 'mixture' && shape !== 'clustered') throw new Error('--shape must be mixture or clustered');
    opts = {
      ads: positive('ads', values.ads, 100_000),
      shape,
      dim: positive('dim', values.dim, 64),
      seed: positive('seed', values.seed, 7, 0),
      requests: positive('requests', values.requests, 300),
      numResults: positive('num-results', values['num-results'], 50),
      warmup: positive('warmup', values.warmup, 30, 0),
    };
  } catch (err) {
    process.stderr.write(`bench:recall: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const repoRoot = path.resolve(__dirname, '..', '..');
  const mainJs = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
  const log = (m: string) => process.stderr.write(`bench:recall: ${m}\n`);
  const data = await ensureGeneratedDataDir(mainJs, path.join(repoRoot, 'bench', '.cache'), { ads: opts.ads, dim: opts.dim, seed: opts.seed, shape: opts.shape }, log);
  const configs = [
    { label: 'before', config: parseConfigObject(BEFORE_CONFIG) },
    { label: 'default', config: defaultConfig() },
  ];
  const state = await ServingState.open(data.dir, configs[1].config, pino({ level: 'warn' }, pino.destination(2)));
  try {
    const attrs = generateRequests(opts.requests, opts.seed + 1);
    const users = generateUserEmbeddings(opts.requests, { dim: opts.dim, seed: opts.seed, shape: opts.shape });
    const requests: DecodedRetrieve[] = attrs.map((a, i) => ({
      ...blankRetrieve(),
      request_id: `recall-${i}`,
      user_id: `user-${i}`,
      attributes: Object.fromEntries(Object.entries(a).map(([k, v]) => [k, { values: [...(v ?? [])] }])),
      user_embedding: users[i],
      num_results: opts.numResults,
    }));
    log(`${opts.ads} ads (${opts.shape}, ${opts.dim}-d, seed ${opts.seed}), ${opts.requests} requests, N ${opts.numResults}; data ${data.dir}`);
    const run = await evaluateAll(state, configs, requests, { warmup: opts.warmup });
    process.stdout.write(`bench:recall ${opts.ads} ads, ${opts.shape}, ${opts.dim}-d, seed ${opts.seed} (generated data)\n`);
    process.stdout.write(formatReport(run.summaries, run.diffs, run.invalid));
    const base = run.summaries.find((s) => s.config === 'before');
    const now = run.summaries.find((s) => s.config === 'default');
    if (base && now) {
      process.stdout.write(
        `\ndefault vs before: recall@N ${now.recall_at_n.toFixed(3)} vs ${base.recall_at_n.toFixed(3)}; ` +
          `CPU per request ${(now.cpu_ms_per_request / base.cpu_ms_per_request).toFixed(2)}x (${now.cpu_ms_per_request.toFixed(3)} vs ${base.cpu_ms_per_request.toFixed(3)} ms)\n`,
      );
    }
    for (const s of run.summaries) process.stdout.write(JSON.stringify({ bench: 'recall', ads: opts.ads, shape: opts.shape, ...s }) + '\n');
    return 0;
  } finally {
    await state.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    process.stderr.write(`bench:recall: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  },
);
