/**
 * `funnel explain`, run as the command line against a real server (the e2e fixture, in this
 * process, so the CLI is spawned asynchronously): the table and summary, --json, stdin, the
 * bearer token and mutual TLS, and the exit codes (0 ok, 1 the call failed, 2 bad usage or file).
 */
import { strict as assert } from 'node:assert';
import { execFileSync, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { row, tempDir } from '../fixtures/catalog';
import { ADMIN_TOKEN, startE2eServer, type E2eServer } from '../fixtures/e2e-server';

const CLI = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');
const DIM = 6;

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI without blocking this process's event loop (the server answers from it). */
function funnel(args: string[], stdin = ''): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, OTEL_TRACES_EXPORTER: 'none' } });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

/** 12 untargeted ads `ad-0..11` (ad-0 paused) and `tgt-1`, for country US only. */
function rows(): Record<string, unknown>[] {
  return [
    ...Array.from({ length: 12 }, (_, n) => row(n, DIM, n === 0 ? { status: 'paused' } : {})),
    row(50, DIM, { ad_id: 'tgt-1', targeting: [{ country: { any_of: ['US'] } }] }),
  ];
}

describe('funnel explain', () => {
  let tmp: string;
  let s: E2eServer;
  let tokenFile: string;
  let requestFile: string;
  const file = (name: string, text: string) => {
    const p = path.join(tmp, name);
    fs.writeFileSync(p, text);
    return p;
  };
  const explain = (...args: string[]) => funnel(['explain', '--addr', s.address, ...args]);

  before(async () => {
    tmp = tempDir('explain-cli');
    s = await startE2eServer({ rows: rows(), config: { limits: { shed_event_loop_lag_ms: 0, default_deadline_ms: 30_000 } } });
    tokenFile = file('token', `${ADMIN_TOKEN}\n`);
    requestFile = file('request.json', JSON.stringify({ num_results: 3, attributes: { country: ['DE'] } }));
  });
  after(async () => {
    await s?.stop();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('when ads are explained, then it exits 0 and prints one row per asked ad, detail last, then the response summary', async () => {
    const retrieved = await s.retrieval.retrieve({ num_results: 3, attributes: { country: { values: ['DE'] } } });
    const first = retrieved.candidates[0].ad_id;
    const r = await explain('--request', requestFile, '--ad-ids', `${first},ad-0`, '--ad-ids', 'tgt-1,nope-1', '--admin-token-file', tokenFile);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, '');
    const lines = r.stdout.trimEnd().split('\n');
    assert.equal(lines.length, 6, r.stdout);
    assert.match(lines[0], /^ad_id\s+outcome\s+stage\s+reason\s+position\s+score\s+detail$/);
    const cells = (line: string) => line.split(/\s{2,}/);
    assert.deepEqual(cells(lines[1]).slice(0, 5), [first, 'returned', '-', '-', '1']);
    assert.ok(Number(cells(lines[1])[5]) > 0, lines[1]);
    assert.deepEqual(cells(lines[2]).slice(0, 4), ['ad-0', 'not_eligible', 'Eligibility', 'paused']);
    assert.deepEqual(cells(lines[3]).slice(0, 4), ['tgt-1', 'not_eligible', 'Eligibility', 'targeting']);
    assert.ok(lines[3].endsWith('#1 country any_of [US] (request: [DE])'), lines[3]);
    assert.deepEqual(cells(lines[4]).slice(0, 2), ['nope-1', 'unknown_ad']);
    // Columns line up: every row's outcome starts where the header's does.
    const at = lines[0].indexOf('outcome');
    for (const line of lines.slice(1, 5)) assert.match(line.slice(at), /^(returned|not_eligible|unknown_ad)/, line);
    for (const line of lines) assert.equal(line, line.trimEnd(), 'no trailing padding');
    assert.equal(lines[5], `response: 3 candidates returned (pipeline default, data_seq ${retrieved.data_seq}); degraded stages: none`);
  });

  it('when --json is given and the request comes on stdin in lowerCamelCase, then it prints the ExplainResponse as JSON', async () => {
    const r = await funnel(['explain', '--addr', s.address, '--request', '-', '--ad-ids', 'ad-0, nope-1', '--admin-token-file', tokenFile, '--json'], JSON.stringify({ numResults: 2, debug: true }));
    assert.equal(r.status, 0, r.stderr);
    const res = JSON.parse(r.stdout) as { response: { candidates: unknown[]; stages: { name: string }[] }; ads: { ad_id: string; outcome: string; reason?: string }[] };
    assert.equal(res.response.candidates.length, 2);
    assert.ok(res.response.stages.some((x) => x.name === 'Diversifier'), 'debug reached the server');
    assert.deepEqual(
      res.ads.map((a) => [a.ad_id, a.outcome, a.reason ?? '']),
      [
        ['ad-0', 'not_eligible', 'paused'],
        ['nope-1', 'unknown_ad', ''],
      ],
    );
  });

  it('when the token is missing or wrong, then it exits 1 with UNAUTHENTICATED: details on stderr', async () => {
    const none = await explain('--request', requestFile, '--ad-ids', 'ad-1');
    assert.equal(none.status, 1);
    assert.match(none.stderr, /^funnel explain: UNAUTHENTICATED: .+\n$/);
    assert.equal(none.stdout, '');
    const wrong = await explain('--request', requestFile, '--ad-ids', 'ad-1', '--admin-token-file', file('wrong-token', 'not-the-token-0123456789\n'));
    assert.equal(wrong.status, 1);
    assert.match(wrong.stderr, /^funnel explain: UNAUTHENTICATED: the bearer token does not match\n$/);
  });

  it('when the server refuses the request or an ad id, then it exits 1 with INVALID_ARGUMENT naming the field', async () => {
    const big = await explain('--request', file('big.json', '{"num_results": 100000}'), '--ad-ids', 'ad-1', '--admin-token-file', tokenFile);
    assert.equal(big.status, 1);
    assert.match(big.stderr, /^funnel explain: INVALID_ARGUMENT: request\.num_results/);
    const id = await explain('--request', requestFile, '--ad-ids', 'ad-1,bad id', '--admin-token-file', tokenFile);
    assert.equal(id.status, 1);
    assert.match(id.stderr, /^funnel explain: INVALID_ARGUMENT: ad_ids\[1\]/);
  });

  it('when nothing listens at --addr, then it exits 1 with UNAVAILABLE within --timeout-ms', async () => {
    const r = await funnel(['explain', '--addr', '127.0.0.1:1', '--request', requestFile, '--ad-ids', 'ad-1', '--timeout-ms', '2000']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^funnel explain: (UNAVAILABLE|DEADLINE_EXCEEDED): /);
  });

  const usage: { name: string; args: () => string[]; stderr: RegExp }[] = [
    { name: '--ad-ids is missing', args: () => ['--request', requestFile], stderr: /--ad-ids/ },
    { name: '--ad-ids holds an empty id', args: () => ['--request', requestFile, '--ad-ids', 'ad-1,,ad-2'], stderr: /--ad-ids/ },
    { name: '--request is missing', args: () => ['--ad-ids', 'ad-1'], stderr: /--request/ },
    { name: 'the request file does not exist', args: () => ['--request', path.join(tmp, 'missing.json'), '--ad-ids', 'ad-1'], stderr: /missing\.json/ },
    { name: 'the request file is not JSON', args: () => ['--request', file('bad.json', '{nope'), '--ad-ids', 'ad-1'], stderr: /JSON/ },
    { name: 'a request field has the wrong type', args: () => ['--request', file('typed.json', '{"num_results": "many"}'), '--ad-ids', 'ad-1'], stderr: /num_results/ },
    { name: 'the token file does not exist', args: () => ['--request', requestFile, '--ad-ids', 'ad-1', '--admin-token-file', path.join(tmp, 'no-token')], stderr: /admin-token-file/ },
    { name: 'the token file is empty', args: () => ['--request', requestFile, '--ad-ids', 'ad-1', '--admin-token-file', file('empty-token', '\n')], stderr: /empty/ },
  ];
  for (const c of usage) {
    it(`when ${c.name}, then it exits 2 saying so, without calling`, async () => {
      const r = await explain(...c.args());
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, c.stderr);
      assert.equal(r.stdout, '');
    });
  }

  describe('over mutual TLS', () => {
    let pki: string;
    let tls: E2eServer;
    before(async () => {
      pki = tempDir('explain-pki');
      const openssl = (...args: string[]) => execFileSync('/usr/bin/openssl', args, { cwd: pki, stdio: 'pipe' });
      const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
      openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=funnel explain ca');
      fs.writeFileSync(path.join(pki, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
      fs.writeFileSync(path.join(pki, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
      for (const [name, ext] of [
        ['server', 'server.ext'],
        ['client', 'client.ext'],
      ]) {
        openssl('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
        openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', '-extfile', ext);
      }
      const pem = (n: string) => fs.readFileSync(path.join(pki, n));
      tls = await startE2eServer({
        rows: rows(),
        adminToken: null,
        tls: { cert: path.join(pki, 'server.crt'), key: path.join(pki, 'server.key'), clientCa: path.join(pki, 'ca.crt') },
        transport: { credentials: grpc.credentials.createSsl(pem('ca.crt'), pem('client.key'), pem('client.crt')), options: { 'grpc.ssl_target_name_override': 'localhost' } },
      });
    });
    after(async () => {
      await tls?.stop();
      if (pki) fs.rmSync(pki, { recursive: true, force: true });
    });

    it('when the client presents a certificate of the client CA, then Explain answers without a token', async () => {
      const p = (n: string) => path.join(pki, n);
      const r = await funnel(['explain', '--addr', `localhost:${tls.running.port}`, '--request', requestFile, '--ad-ids', 'ad-0', '--tls-ca', p('ca.crt'), '--tls-cert', p('client.crt'), '--tls-key', p('client.key')]);
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stdout, /^ad-0\s+not_eligible\s+Eligibility\s+paused/m);
      assert.match(r.stdout, /^response: 3 candidates returned/m);
    });
  });
});
