/**
 * The learned-ranking chain end to end: a server logging every Retrieve's features answers a
 * few hundred requests; impressions and clicks for the returned ads are drawn from a known
 * click model (fixed seed) into an events file; `funnel examples` joins them, `funnel
 * train-ranker` fits weights into a config, a second server serves that config (one answer's
 * score recomputed from its logged features and the trained weights), and `funnel eval
 * --examples` puts the trained config's log-loss at or below the default config's.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { runExamples } from '../../src/cli/examples-command';
import { runTrainRanker } from '../../src/cli/train-command';
import { loadConfigFile } from '../../src/config/load';
import { ecpm, pctr } from '../../src/stages/ranking/early-ranker';
import { row, tempDir } from '../fixtures/catalog';
import { startE2eServer, type E2eServer } from '../fixtures/e2e-server';
import { lcg, readFeatureRows } from '../fixtures/examples';

const DIM = 4;
const ADS = 30;
const REQUESTS = 300;
const SHOWN = 5;

const catalog = () => Array.from({ length: ADS }, (_, n) => row(n, DIM, { quality: (n % 6) / 5, ctr_prior: [0.005, 0.02, 0.05][n % 3], bid_micros: 500_000 + 20_000 * n }));
/** The click model the events are drawn from: high-quality ads are clicked far more. */
const clickProbability = (quality: number) => 1 / (1 + Math.exp(-(-3 + 4 * quality)));

const sink = () => {
  const chunks: string[] = [];
  const stream = new Writable({
    write: (c: Buffer, _e, cb) => {
      chunks.push(c.toString());
      cb();
    },
  });
  return { stream, text: () => chunks.join('') };
};

describe('e2e: feature log -> examples -> train-ranker -> serve -> eval', () => {
  let tmp: string;
  const servers: E2eServer[] = [];
  before(() => (tmp = tempDir('ranker-chain')));
  after(async () => {
    for (const s of servers) await s.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('when weights are trained on logged features and drawn clicks, then the served scores use them and they fit the clicks at least as well as the defaults', async () => {
    const ads = catalog();
    const quality = new Map(ads.map((a) => [a.ad_id as string, a.quality as number]));
    const logDir = path.join(tmp, 'features-1');
    const first = await startE2eServer({ rows: ads, config: { version: 'chain-0', feature_log: { sample: 1, cut_sample: 0 } }, featureLog: { dir: logDir } });
    servers.push(first);
    const u = lcg(42);
    const events: string[] = [];
    for (let i = 0; i < REQUESTS; i++) {
      const embedding = Array.from({ length: DIM }, () => 2 * u() - 1);
      const res = await first.retrieval.retrieve({ request_id: `chain-${i}`, user_embedding: embedding, num_results: SHOWN }, { deadlineMs: 10_000 });
      assert.equal(res.candidates.length, SHOWN);
      const t = Date.now();
      for (const c of res.candidates) {
        events.push(JSON.stringify({ ad_id: c.ad_id, type: 'IMPRESSION', timestamp_ms: t, request_id: `chain-${i}` }));
        if (u() < clickProbability(quality.get(c.ad_id)!)) events.push(JSON.stringify({ ad_id: c.ad_id, type: 'CLICK', timestamp_ms: t + 1, request_id: `chain-${i}` }));
      }
    }
    await first.running.featureLog!.flush();
    const eventsFile = path.join(tmp, 'events.jsonl');
    fs.writeFileSync(eventsFile, events.join('\n') + '\n');

    const examplesFile = path.join(tmp, 'examples.jsonl');
    const err = sink();
    assert.equal(await runExamples({ log: logDir, events: eventsFile, out: examplesFile }, err.stream, sink().stream), 0, err.text());
    const examples = fs.readFileSync(examplesFile, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l));
    assert.equal(examples.length, REQUESTS * SHOWN, 'one example per shown ad');
    assert.ok(examples.some((e) => e.label === 1) && examples.some((e) => e.label === 0));

    const trained = path.join(tmp, 'trained.yaml');
    assert.equal(await runTrainRanker({ examples: examplesFile, out: trained }), 0);
    const weights = loadConfigFile(trained).pipelines.default.stages.EarlyRanker.weights;
    assert.ok(weights.quality > 1, `the click model's quality effect is learned: ${weights.quality}`);

    // The trained config served: a candidate's score is eCPM by the trained weights from its features.
    const logDir2 = path.join(tmp, 'features-2');
    fs.writeFileSync(trained, fs.readFileSync(trained, 'utf8') + '\nfeature_log: {sample: 1, cut_sample: 0}\n');
    const second = await startE2eServer({ rows: ads, configFile: trained, featureLog: { dir: logDir2 } });
    servers.push(second);
    const res = await second.retrieval.retrieve({ request_id: 'served-1', user_embedding: [0.5, -0.2, 0.3, 0.1], num_results: SHOWN }, { deadlineMs: 10_000 });
    await second.running.featureLog!.flush();
    const logged = (await readFeatureRows(logDir2)).filter((r) => r.request_id === 'served-1' && r.kept);
    const top = res.candidates[0];
    const r = logged.find((l) => l.ad_id === top.ad_id)!;
    assert.ok(r, 'the top answer is logged');
    const bid = ads.find((a) => a.ad_id === top.ad_id)!.bid_micros as number;
    const expected = ecpm(bid, pctr(weights, r.features));
    assert.ok(Math.abs(top.score! - expected) < 1e-9 * expected, `score ${top.score} vs ${expected} from the trained weights`);

    // funnel eval --examples: trained against the built-in defaults.
    const defaults = path.join(tmp, 'defaults.yaml');
    fs.writeFileSync(defaults, 'version: defaults\n');
    const cli = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');
    const ev = spawnSync(process.execPath, [cli, 'eval', '--examples', examplesFile, '--config', trained, '--against', defaults, '--json'], { encoding: 'utf8' });
    assert.equal(ev.status, 0, ev.stderr);
    const [t, d] = ev.stdout.trimEnd().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual([t.config, d.config], ['trained.yaml', 'defaults.yaml']);
    assert.equal(t.examples, REQUESTS * SHOWN);
    assert.ok(t.log_loss <= d.log_loss, `trained ${t.log_loss} vs default ${d.log_loss}`);
  });
});
