import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { row, tempDir, writeCatalog } from '../fixtures/catalog';

const CLI = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');
const funnel = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

describe('funnel command line', () => {
  let tmp: string;
  before(() => {
    tmp = tempDir('cli');
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('when ingest succeeds, then it exits 0 and stats prints counts, dimension and index size', () => {
    const file = writeCatalog(tmp, 'ok.jsonl', [row(1, 6), row(2, 6, { status: 'paused' }), row(3, 6)]);
    const data = path.join(tmp, 'data');
    const r = funnel('ingest', '--catalog', file, '--data', data, '--threads', '1');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /ingested 3 rows/);
    const s = funnel('stats', '--data', data);
    assert.equal(s.status, 0, s.stderr);
    assert.match(s.stdout, /ads\s+3 \(2 active, 1 paused/);
    assert.match(s.stdout, /dimension\s+6/);
    assert.match(s.stdout, /ann index\s+3 vectors/);
    const j = JSON.parse(funnel('stats', '--data', data, '--json').stdout);
    assert.equal(j.ads, 3);
    assert.equal(j.ann.current, true);
  });

  it('when rows are bad, then it exits 1 with one line per bad row naming the line and field', () => {
    const file = writeCatalog(tmp, 'bad.jsonl', [row(1, 6), { ...row(2, 6), quality: 7 }, 'nope']);
    const r = funnel('ingest', '--catalog', file, '--data', path.join(tmp, 'data2'));
    assert.equal(r.status, 1);
    assert.match(r.stderr, new RegExp(`${file}:2: quality: must be in \\[0, 1\\]`));
    assert.match(r.stderr, new RegExp(`${file}:3: \\(row\\): invalid JSON`));
    assert.match(r.stderr, /2 bad rows; nothing was applied/);
  });

  it('when usage is wrong or the directory is not a data directory, then it exits 2 or 3 with one message', () => {
    assert.equal(funnel('ingest', '--data', tmp).status, 2);
    assert.equal(funnel('ingest', '--catalog', 'x', '--data', tmp, '--ann-m', 'zero').status, 2);
    const r = funnel('stats', '--data', path.join(tmp, 'missing'));
    assert.equal(r.status, 3);
    assert.match(r.stderr, /does not exist/);
  });

  it('when the cluster flags are misused, then serve, root and ingest exit 2 naming what is wrong, before touching NATS or the data', () => {
    const data = path.join(tmp, 'cluster-flags');
    fs.mkdirSync(data);
    const cases: [string[], RegExp][] = [
      [['serve', '--data', data, '--nats', 'nats://127.0.0.1:1'], /--nats and --shard go together/],
      [['serve', '--data', data, '--shard', '0/2'], /--nats and --shard go together/],
      [['serve', '--data', data, '--nats', 'nats://127.0.0.1:1', '--shard', '2/2'], /--shard: I must be in 0\.\.1, got 2/],
      [['serve', '--data', data, '--nats', 'nats://127.0.0.1:1', '--shard', 'one'], /--shard must be I\/N/],
      [['serve', '--data', data, '--nats', 'nats://127.0.0.1:1', '--shard', '0/2', '--workers', '2'], /--nats runs one serving process per replica/],
      [['root', '--shards', 'a:1;;b:2'], /--shards must be/],
      [['root', '--shards', 'a:1;b'], /"b" is not HOST:PORT/],
      [['root', '--shards', 'a:1', '--admin-token-file', path.join(tmp, 'no-token')], /cannot read --admin-token-file/],
      [['ingest', '--catalog', 'x.jsonl', '--nats', 'nats://127.0.0.1:1'], /--nats needs --shards N/],
      [['ingest', '--catalog', 'x.jsonl', '--data', data, '--nats', 'nats://127.0.0.1:1', '--shards', '2'], /either --data DIR or --nats URL --shards N/],
      [['ingest', '--catalog', 'x.jsonl', '--data', data, '--shards', '2'], /--shards and --config go with --nats/],
    ];
    for (const [args, message] of cases) {
      const r = funnel(...args);
      assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message, args.join(' '));
    }
    assert.deepEqual(fs.readdirSync(data), [], 'nothing was created in the data directory');
  });
});
