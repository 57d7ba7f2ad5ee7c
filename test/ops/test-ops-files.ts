/**
 * Checks what SREs deploy (ops/): every YAML and JSON file parses; the compose stack (and its
 * "cluster" profile), the Kubernetes objects (single-node and ops/k8s/cluster), the alert rules
 * and the Grafana dashboard have the shape they need and agree with each other (shard numbers,
 * replica lists, NATS routes, selectors, thresholds); every metric their PromQL names is one the
 * service exports; the ConfigMaps' configs validate; the compose health check answers by the
 * health service. Where promtool and kubectl are on PATH, they check the rules (including their
 * unit tests), the Prometheus config and both kustomizations too; otherwise those cases are
 * skipped, saying so.
 */
import { strict as assert } from 'node:assert';
import { execFile, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { Registry, collectDefaultMetrics } from 'prom-client';
import { parseAllDocuments } from 'yaml';
import { parseConfigText } from '../../src/config/load';
import { clusterSchema } from '../../src/config/schema';
import { METRIC_NAMES } from '../../src/telemetry/metrics';

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

function repoRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'package.json')) || !fs.existsSync(path.join(dir, 'ops'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`no repository root above ${__dirname}`);
    dir = up;
  }
  return dir;
}

const ROOT = repoRoot();
const OPS = path.join(ROOT, 'ops');
const rel = (...p: string[]) => path.join(OPS, ...p);
const read = (...p: string[]) => fs.readFileSync(rel(...p), 'utf8');

function walk(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}

/** Every document of a YAML file, as plain objects; throws on any syntax error or duplicate key. */
function yamlDocs(file: string): Obj[] {
  const docs = parseAllDocuments(fs.readFileSync(file, 'utf8'), { uniqueKeys: true });
  if (!Array.isArray(docs)) throw new Error(`${file}: not a YAML stream`);
  for (const d of docs) {
    if (d.errors.length > 0) throw new Error(`${file}: ${d.errors.map((e) => e.message).join('; ')}`);
  }
  return docs.map((d) => d.toJS() as Obj).filter((d) => d !== null && d !== undefined);
}

const yamlOne = (...p: string[]): Obj => {
  const docs = yamlDocs(rel(...p));
  assert.equal(docs.length, 1, `${p.join('/')}: expected one YAML document`);
  return docs[0];
};

function onPath(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' }).status === 0;
}

/** Skips a test, saying why on stderr (mocha's skip takes no reason). */
function skipWith(ctx: Mocha.Context, why: string): never {
  process.stderr.write(`      skipped: ${why}\n`);
  ctx.skip();
}

function run(cmd: string, args: string[], cwd = ROOT): { status: number | null; out: string } {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}` };
}

/** Metric names a PromQL expression uses (the families this test knows: funnel_*, process_*, nodejs_*, up). */
function metricNames(expr: string): string[] {
  // Drop label matchers' values first, so a quoted string never reads as a metric.
  const bare = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  return [...bare.matchAll(/\b(funnel_[a-z0-9_]+|process_[a-z0-9_]+|nodejs_[a-z0-9_]+|up)\b/g)].map((m) => m[1]);
}

/** Names prom-client's default metrics register here (process_*, nodejs_*), without histogram suffixes. */
async function defaultMetricNames(): Promise<Set<string>> {
  const r = new Registry();
  collectDefaultMetrics({ register: r });
  const names = (await r.getMetricsAsJSON()).map((m) => m.name);
  r.clear();
  return new Set(names);
}

function unknownMetrics(exprs: string[], known: Set<string>): string[] {
  const bad = new Set<string>();
  for (const e of exprs) {
    for (const name of metricNames(e)) {
      if (known.has(name)) continue;
      const base = name.replace(/_(bucket|sum|count)$/, '');
      if (base !== name && known.has(base)) continue;
      bad.add(`${name} (in ${e.replace(/\s+/g, ' ').slice(0, 120)})`);
    }
  }
  return [...bad];
}

/** "6Gi" / "512Mi" / "4" as bytes or cores. */
function quantity(q: string | number): number {
  const m = /^([0-9.]+)(Ki|Mi|Gi|Ti|m)?$/.exec(String(q));
  if (!m) throw new Error(`quantity ${q}`);
  const mult: Record<string, number> = { Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4, m: 0.001 };
  return Number(m[1]) * (m[2] ? mult[m[2]] : 1);
}

/** The value after `--flag` (or in `--flag=value`) in an argument list. */
function argValue(args: string[], flag: string): string | undefined {
  for (let i = 0; i < args.length; i++) {
    if (args[i] === flag) return args[i + 1];
    if (args[i].startsWith(`${flag}=`)) return args[i].slice(flag.length + 1);
  }
  return undefined;
}

function pinned(image: string): boolean {
  if (image.includes('@sha256:')) return true;
  const tag = /:([^/:]+)$/.exec(image)?.[1];
  return tag !== undefined && tag !== 'latest' && /\d/.test(tag);
}

function alertRules(): Obj[] {
  return yamlOne('alerts', 'funnel-rules.yaml').groups.flatMap((g: Obj) => g.rules as Obj[]);
}

function dashboard(): Obj {
  return JSON.parse(read('grafana', 'dashboards', 'funnel.json')) as Obj;
}

function dashboardPanels(): Obj[] {
  const all: Obj[] = [];
  const visit = (ps: Obj[]) => {
    for (const p of ps) {
      all.push(p);
      if (Array.isArray(p.panels)) visit(p.panels);
    }
  };
  visit(dashboard().panels);
  return all;
}

function dashboardExprs(): string[] {
  const d = dashboard();
  const exprs = dashboardPanels().flatMap((p) => (p.targets ?? []).map((t: Obj) => String(t.expr)));
  for (const v of d.templating?.list ?? []) {
    if (typeof v.definition === 'string') exprs.push(v.definition);
    if (typeof v.query === 'string') exprs.push(v.query);
    else if (typeof v.query?.query === 'string') exprs.push(v.query.query);
  }
  return exprs;
}

function k8s(file: string): Obj {
  const docs = yamlDocs(rel('k8s', file));
  assert.equal(docs.length, 1, `${file}: one object per file`);
  return docs[0];
}

/** The resource files of the cluster kustomization (ops/k8s/cluster/*.yaml but kustomization.yaml). */
function clusterFiles(): string[] {
  return fs
    .readdirSync(rel('k8s', 'cluster'), { withFileTypes: true })
    .filter((e) => e.isFile() && e.name.endsWith('.yaml') && e.name !== 'kustomization.yaml')
    .map((e) => e.name)
    .sort();
}

/** Every object in the cluster's resource files (several per file), in file order. */
function clusterObjects(): Obj[] {
  return clusterFiles().flatMap((f) => yamlDocs(rel('k8s', 'cluster', f)));
}

function clusterObject(kind: string, name: string): Obj {
  const found = clusterObjects().filter((o) => o.kind === kind && o.metadata?.name === name);
  assert.equal(found.length, 1, `ops/k8s/cluster: expected one ${kind} ${name}, found ${found.length}`);
  return found[0];
}

/** The example ingest Job (outside the kustomization). */
function ingestJob(): Obj {
  const docs = yamlDocs(rel('k8s', 'cluster', 'jobs', 'ingest.yaml'));
  assert.equal(docs.length, 1, 'jobs/ingest.yaml: one object');
  return docs[0];
}

/** Whether a label selector (matchLabels-style map, never empty) selects these labels. */
function selects(selector: Obj | undefined, labels: Obj | undefined): boolean {
  assert.ok(selector && Object.keys(selector).length > 0, 'empty selector');
  return Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

/** A container's command and args as one list of strings. */
function commandLine(c: Obj): string[] {
  return [...(c.command ?? []), ...(c.args ?? [])].map(String);
}

/** The shard StatefulSets (funnel-shard-I), by shard number. */
function shardSets(): Obj[] {
  return clusterObjects()
    .filter((o) => o.kind === 'StatefulSet' && /^funnel-shard-\d+$/.test(o.metadata.name))
    .sort((a, b) => Number(a.metadata.name.split('-').pop()) - Number(b.metadata.name.split('-').pop()));
}

function funnelContainer(workload: Obj): Obj {
  const c = (workload.spec.template.spec.containers as Obj[]).find((x) => x.name === 'funnel');
  assert.ok(c, `${workload.metadata.name}: no container "funnel"`);
  return c;
}

/** nats.conf's client URL of the NATS client Service: nats://SERVICE:PORT. */
function natsClientUrl(): string {
  const svc = clusterObject('Service', 'funnel-nats');
  const port = (svc.spec.ports as Obj[]).find((p) => p.name === 'client') as Obj;
  return `nats://${svc.metadata.name}:${port.port}`;
}

function composeFile(): Obj {
  return yamlOne('compose', 'docker-compose.yaml');
}

/** The compose services of a profile, by name. */
function profileServices(profile: string): Record<string, Obj> {
  return Object.fromEntries(Object.entries(composeFile().services as Obj).filter(([, s]) => (s.profiles ?? []).includes(profile)));
}

describe('ops files', () => {
  describe('parsing', () => {
    it('when every YAML and JSON file under ops/ is read, then each parses (YAML as a multi-document stream, duplicate keys refused)', () => {
      const files = walk(OPS).filter((f) => /\.(ya?ml|json)$/.test(f));
      assert.ok(files.length >= 12, `found only ${files.length} files`);
      for (const f of files) {
        if (f.endsWith('.json')) JSON.parse(fs.readFileSync(f, 'utf8'));
        else assert.ok(yamlDocs(f).length >= 1, `${f}: empty`);
      }
    });
  });

  describe('compose', () => {
    const compose = () => yamlOne('compose', 'docker-compose.yaml');

    it('when the compose file is read, then it runs the service, the collector, Jaeger v2, Prometheus and Grafana on pinned images', () => {
      const s = compose().services as Obj;
      for (const name of ['funnel', 'otel-collector', 'jaeger', 'prometheus', 'grafana']) assert.ok(s[name], `service ${name}`);
      for (const [name, svc] of Object.entries(s)) {
        if (svc.image !== undefined) assert.ok(pinned(svc.image), `${name}: image ${svc.image} is not pinned`);
        else assert.ok(svc.build, `${name}: neither image nor build`);
      }
      assert.match(s.jaeger.image, /^jaegertracing\/jaeger:2\./);
      assert.match(s['otel-collector'].image, /^otel\/opentelemetry-collector-contrib:/);
    });

    it('when the funnel service is built, then its context is the repository root and the Dockerfile runs the demo on 0.0.0.0 with metrics on 9464', () => {
      const f = compose().services.funnel as Obj;
      assert.equal(path.resolve(rel('compose'), f.build.context), ROOT);
      const dockerfile = path.join(ROOT, f.build.dockerfile);
      const text = fs.readFileSync(dockerfile, 'utf8');
      const from = /^FROM\s+(\S+)/m.exec(text)?.[1] ?? '';
      assert.ok(pinned(from), `FROM ${from}`);
      assert.match(text, /npm ci/);
      assert.match(text, /npm run build/);
      const cmd = JSON.parse(/^CMD\s+(\[.*\])\s*$/m.exec(text)?.[1] ?? '[]') as string[];
      assert.deepEqual(cmd.slice(0, 3), ['node', 'dist/src/cli/main.js', 'demo']);
      assert.equal(argValue(cmd, '--host'), '0.0.0.0');
      assert.equal(argValue(cmd, '--metrics-port'), '9464');
      assert.ok(fs.existsSync(`${dockerfile}.dockerignore`), 'Dockerfile.dockerignore keeps node_modules and builds out of the context');
      const env = f.environment as Obj;
      assert.equal(env.OTEL_TRACES_EXPORTER, 'otlp');
      assert.equal(env.OTEL_EXPORTER_OTLP_ENDPOINT, 'http://otel-collector:4317');
      assert.equal(env.OTEL_EXPORTER_OTLP_PROTOCOL, 'grpc');
      assert.ok((f.ports as string[]).some((p) => p.endsWith(':9464')));
      assert.ok((f.ports as string[]).some((p) => p.endsWith(':50051')));
    });

    it('when a service bind-mounts a repository path, then that path exists', () => {
      for (const [name, svc] of Object.entries(compose().services as Obj)) {
        for (const v of (svc.volumes ?? []) as string[]) {
          const src = v.split(':')[0];
          if (!src.startsWith('.')) continue;
          assert.ok(fs.existsSync(path.resolve(rel('compose'), src)), `${name}: ${src} missing`);
        }
      }
    });

    it('when the collector config is read, then OTLP comes in on 4317 and 4318 and goes to jaeger:4317 through a batch processor', () => {
      const c = yamlOne('compose', 'otel-collector.yaml');
      assert.match(c.receivers.otlp.protocols.grpc.endpoint, /:4317$/);
      assert.match(c.receivers.otlp.protocols.http.endpoint, /:4318$/);
      const traces = c.service.pipelines.traces as Obj;
      assert.ok(traces.processors.includes('batch'));
      for (const kind of ['receivers', 'processors', 'exporters'] as const) {
        for (const id of traces[kind] as string[]) assert.ok(c[kind][id] !== undefined, `${kind}.${id} is used but not defined`);
      }
      for (const id of c.service.extensions ?? []) assert.ok(c.extensions[id] !== undefined, `extension ${id}`);
      const exporter = c.exporters[traces.exporters[0]] as Obj;
      assert.equal(exporter.endpoint, 'jaeger:4317');
      assert.equal(exporter.tls.insecure, true);
    });

    it('when Prometheus is configured, then it scrapes funnel:9464 every 5s as job "funnel" and loads the alert rules by a path that resolves from the repository and in the container', () => {
      const p = yamlOne('compose', 'prometheus.yml');
      const job = (p.scrape_configs as Obj[]).find((j) => j.job_name === 'funnel');
      assert.ok(job);
      assert.equal(job.scrape_interval, '5s');
      assert.deepEqual(job.static_configs[0].targets, ['funnel:9464']);
      assert.deepEqual(p.rule_files, ['../alerts/funnel-rules.yaml']);
      assert.ok(fs.existsSync(path.resolve(rel('compose'), p.rule_files[0])));
      // In the container prometheus.yml is /etc/prometheus/prometheus.yml: the rule path is /etc/alerts/..., mounted from ops/alerts.
      const mounts = compose().services.prometheus.volumes as string[];
      assert.ok(mounts.some((m) => m.startsWith('./prometheus.yml:/etc/prometheus/prometheus.yml')));
      assert.ok(mounts.some((m) => m.startsWith('../alerts:/etc/alerts')));
    });

    it('when Grafana starts, then it is provisioned with a fixed-uid Prometheus datasource and the dashboard directory it mounts', () => {
      const ds = yamlOne('grafana', 'provisioning', 'datasources', 'prometheus.yaml').datasources[0] as Obj;
      assert.equal(ds.type, 'prometheus');
      assert.equal(ds.uid, 'funnel-prometheus');
      assert.equal(ds.url, 'http://prometheus:9090');
      const provider = yamlOne('grafana', 'provisioning', 'dashboards', 'funnel.yaml').providers[0] as Obj;
      const mounts = compose().services.grafana.volumes as string[];
      const dash = mounts.find((m) => m.startsWith('../grafana/dashboards:'));
      assert.ok(dash);
      assert.equal(dash.split(':')[1], provider.options.path);
    });
  });

  describe('compose cluster profile', () => {
    const REPLICAS = ['shard0a', 'shard0b', 'shard1a', 'shard1b'];
    const cluster = () => profileServices('cluster');
    const cmd = (svc: Obj): string[] => (Array.isArray(svc.command) ? svc.command.map(String) : String(svc.command).split(/\s+/));
    const dependsOn = (svc: Obj): string[] => (Array.isArray(svc.depends_on) ? svc.depends_on : Object.keys(svc.depends_on ?? {}));

    it('when the compose file is read, then profile "cluster" holds nats, the ingest, 2x2 replicas and the root, and the default stack has no profile (it starts as before)', () => {
      assert.deepEqual(Object.keys(cluster()).sort(), ['ingest', 'nats', 'root', ...REPLICAS].sort());
      const services = composeFile().services as Obj;
      const unprofiled = Object.keys(services).filter((n) => !services[n].profiles);
      assert.deepEqual(unprofiled.sort(), ['funnel', 'grafana', 'jaeger', 'otel-collector', 'prometheus']);
      for (const [name, svc] of Object.entries(cluster())) {
        assert.deepEqual(svc.profiles, ['cluster'], `${name}: profiles`);
        for (const dep of dependsOn(svc)) assert.ok(services[dep], `${name} depends on unknown service ${dep}`);
      }
      for (const name of unprofiled) {
        for (const dep of dependsOn(services[name])) assert.ok(!services[dep].profiles, `${name} (no profile) depends on ${dep} of a profile`);
      }
    });

    it('when NATS runs in the profile, then it is the pinned nats image with JetStream on (-js) on a volume, healthy only with JetStream enabled', () => {
      const nats = cluster().nats;
      assert.equal(nats.image, 'nats:2.10.22-alpine');
      const args = cmd(nats);
      assert.ok(args.includes('-js') || args.includes('--jetstream'), 'JetStream flag');
      const storeDir = argValue(args, '-sd') ?? argValue(args, '--store_dir');
      assert.ok(storeDir, 'store dir');
      assert.ok((nats.volumes as string[]).some((v) => v.split(':')[1] === storeDir && !v.startsWith('.')), 'the store dir is a named volume');
      assert.match(nats.healthcheck.test.join(' '), /8222\/healthz\?js-enabled-only=true/);
    });

    it('when the replicas are read, then each serves --shard I/2 with --nats at the nats service, two per shard, each on its own named volume mounted at /data', () => {
      const services = cluster();
      const volumes = composeFile().volumes as Obj;
      const seen = new Map<string, string>();
      const perShard = new Map<string, string[]>();
      for (const name of REPLICAS) {
        const svc = services[name];
        const args = cmd(svc);
        assert.deepEqual(args.slice(0, 3), ['node', 'dist/src/cli/main.js', 'serve'], `${name}: command`);
        const shard = argValue(args, '--shard') as string;
        assert.match(shard, /^\d+\/2$/, `${name}: --shard`);
        assert.equal(shard.split('/')[0], /^shard(\d+)[a-z]$/.exec(name)?.[1], `${name}: --shard ${shard} does not match its name`);
        perShard.set(shard, [...(perShard.get(shard) ?? []), name]);
        assert.equal(argValue(args, '--nats'), 'nats://nats:4222', `${name}: --nats`);
        assert.equal(argValue(args, '--host'), '0.0.0.0');
        assert.equal(argValue(args, '--metrics-port'), '9464');
        assert.equal(argValue(args, '--workers'), '1');
        const mounts = (svc.volumes as string[]).map((v) => v.split(':'));
        assert.equal(mounts.length, 1, `${name}: one volume`);
        const [vol, target] = mounts[0];
        assert.equal(target, '/data', `${name}: volume target`);
        assert.ok(Object.prototype.hasOwnProperty.call(volumes, vol), `${name}: volume ${vol} is not a named volume`);
        assert.ok(!seen.has(vol), `${name} shares volume ${vol} with ${seen.get(vol)}`);
        seen.set(vol, name);
        assert.ok((argValue(args, '--data') as string).startsWith('/data'), `${name}: --data on the volume`);
        assert.ok(svc.build && svc.image === composeFile().services.funnel.image, `${name}: builds the funnel image`);
        assert.match(svc.healthcheck.test.join(' '), /healthcheck\.js 127\.0\.0\.1:50051 funnel\.v1\.Retrieval/);
        assert.ok(!svc.ports, `${name}: replicas publish no host port`);
      }
      assert.deepEqual([...perShard.keys()].sort(), ['0/2', '1/2']);
      for (const [shard, names] of perShard) assert.equal(names.length, 2, `shard ${shard}: ${names.join(', ')}`);
    });

    it("when the root is read, then --shards names the replica services grouped by their --shard (';' between shards, ',' between replicas) and it is published on host port 50061", () => {
      const services = cluster();
      const root = services.root;
      const args = cmd(root);
      assert.deepEqual(args.slice(0, 3), ['node', 'dist/src/cli/main.js', 'root']);
      const groups = (argValue(args, '--shards') as string).split(';').map((g) => g.split(','));
      assert.equal(groups.length, 2);
      const named = groups.flat().map((a) => a.split(':')[0]);
      assert.deepEqual([...named].sort(), [...REPLICAS].sort(), 'every replica exactly once');
      groups.forEach((group, i) => {
        for (const addr of group) {
          const [host, port] = addr.split(':');
          const replicaArgs = cmd(services[host]);
          assert.equal(argValue(replicaArgs, '--shard'), `${i}/${groups.length}`, `${addr} is listed as shard ${i}`);
          assert.equal(port, argValue(replicaArgs, '--port'), `${addr}: port`);
        }
      });
      assert.equal(argValue(args, '--nats'), 'nats://nats:4222');
      assert.equal(argValue(args, '--host'), '0.0.0.0');
      assert.ok((root.ports as string[]).includes('50061:50051'), 'root on host port 50061');
      const hostPorts = Object.values(composeFile().services as Obj).flatMap((s) => ((s.ports ?? []) as string[]).map((p) => p.split(':')[0]));
      assert.equal(hostPorts.filter((p) => p === '50061').length, 1);
      assert.equal(new Set(hostPorts).size, hostPorts.length, 'a host port is published twice');
    });

    it('when the ingest runs, then it generates the 20k demo catalog with funnel generate and publishes it with funnel ingest --nats --shards 2, once NATS is healthy', () => {
      const ingest = cluster().ingest;
      const script = cmd(ingest).join(' ');
      const generate = /dist\/src\/cli\/main\.js generate --ads 20000 --seed 7 --out (\S+)/.exec(script);
      assert.ok(generate, 'funnel generate --ads 20000');
      const publish = /dist\/src\/cli\/main\.js ingest --catalog (\S+) --nats (\S+) --shards (\d+)/.exec(script);
      assert.ok(publish, 'funnel ingest --catalog --nats --shards');
      assert.ok(generate[1].startsWith(publish[1]), `generates ${generate[1]} but ingests ${publish[1]}`);
      assert.equal(publish[2], 'nats://nats:4222');
      assert.equal(Number(publish[3]), 2);
      assert.equal(ingest.depends_on.nats.condition, 'service_healthy');
      assert.equal(ingest.restart, 'no');
      assert.ok((ingest.volumes as string[]).some((v) => v.endsWith(':/data')), 'the catalog lives in a volume');
    });

    it('when compose reads the cluster commands, then every $ meant for the shell is escaped as $$ (compose interpolates $VAR)', () => {
      for (const [name, svc] of Object.entries(cluster())) {
        for (const part of cmd(svc)) assert.ok(!part.replace(/\$\$/g, '').includes('$'), `${name}: unescaped $ in ${part.slice(0, 80)}`);
      }
    });

    it('when Prometheus is configured, then job funnel-cluster scrapes the root and every replica on 9464 (not job funnel, whose alerts would fire while the profile is down)', () => {
      const p = yamlOne('compose', 'prometheus.yml');
      const job = (p.scrape_configs as Obj[]).find((j) => j.job_name === 'funnel-cluster') as Obj;
      assert.ok(job, 'job funnel-cluster');
      const targets = (job.static_configs as Obj[]).flatMap((c) => c.targets as string[]);
      assert.deepEqual(targets.sort(), ['root', ...REPLICAS].map((s) => `${s}:9464`).sort());
      for (const t of targets) assert.equal(argValue(cmd(cluster()[t.split(':')[0]]), '--metrics-port'), '9464', t);
      const funnelJob = (p.scrape_configs as Obj[]).find((j) => j.job_name === 'funnel') as Obj;
      assert.deepEqual(funnelJob.static_configs.flatMap((c: Obj) => c.targets), ['funnel:9464']);
      // The root's series carry their own `shard` label: a target label of that name would rename it.
      const rootConfig = (job.static_configs as Obj[]).find((c) => (c.targets as string[]).includes('root:9464')) as Obj;
      assert.equal(rootConfig.labels?.shard, undefined);
    });
  });

  describe('grafana dashboard', () => {
    it('when the dashboard is read, then every panel queries the provisioned datasource, ids are unique and panels do not overlap', () => {
      const d = dashboard();
      assert.ok(d.uid && d.title);
      const panels = dashboardPanels();
      const ids = panels.map((p) => p.id);
      assert.equal(new Set(ids).size, ids.length, 'duplicate panel id');
      const cells = new Set<string>();
      for (const p of panels) {
        const g = p.gridPos as Obj;
        assert.ok(g.x + g.w <= 24, `${p.title}: wider than the grid`);
        for (let x = g.x; x < g.x + g.w; x++) {
          for (let y = g.y; y < g.y + g.h; y++) {
            assert.ok(!cells.has(`${x},${y}`), `${p.title} overlaps another panel at ${x},${y}`);
            cells.add(`${x},${y}`);
          }
        }
        if (p.type === 'row') continue;
        assert.equal(p.datasource?.uid, 'funnel-prometheus', `${p.title}: datasource`);
        assert.ok(p.targets?.length > 0, `${p.title}: no queries`);
        for (const t of p.targets) assert.ok(String(t.expr).trim().length > 0, `${p.title}: empty expr`);
      }
    });

    it('when the dashboard is read, then it shows RPC rate, errors, latency percentiles, per-stage latency, funnel counts, degraded and shed rates, in-flight, loop lag, index sizes and config version', () => {
      const exprs = dashboardExprs().join('\n');
      for (const q of ['0.50', '0.95', '0.99']) {
        assert.match(exprs, new RegExp(`histogram_quantile\\(${q.replace('.', '\\.')}, sum by \\(le\\) \\(rate\\(funnel_rpc_duration_seconds_bucket`));
      }
      assert.match(exprs, /histogram_quantile\(0\.99, sum by \(le, stage\) \(rate\(funnel_stage_duration_seconds_bucket/);
      assert.match(exprs, /funnel_stage_candidates_out_total[^\n]*\/ sum by \(stage\) \(rate\(funnel_stage_runs_total/);
      for (const m of [
        'funnel_rpc_requests_total',
        'funnel_retrieve_degraded_total',
        'funnel_degraded_stages_total',
        'funnel_shed_requests_total',
        'funnel_inflight_requests',
        'funnel_event_loop_lag_seconds',
        'funnel_index_size',
        'funnel_config_info',
      ]) {
        assert.ok(exprs.includes(m), `dashboard lacks ${m}`);
      }
    });
    it('when the dashboard is read, then a cluster row shows replication lag, applied rate, parked messages, the NATS connection, root per-shard p99, hedges, degraded answers by shard and live replicas', () => {
      const top = dashboard().panels as Obj[];
      const rowIndex = top.findIndex((p) => p.type === 'row' && /cluster/i.test(p.title));
      assert.ok(rowIndex >= 0, 'a cluster row');
      const nextRow = top.findIndex((p, i) => i > rowIndex && p.type === 'row');
      const rowPanels = top.slice(rowIndex + 1, nextRow < 0 ? top.length : nextRow);
      const exprs = rowPanels.flatMap((p) => (p.targets ?? []).map((t: Obj) => String(t.expr))).join('\n');
      for (const m of [
        'funnel_replication_lag_seconds',
        'funnel_replication_lag_messages',
        'funnel_replication_applied_total',
        'funnel_replication_parked_total',
        'funnel_replication_connected',
        'funnel_root_hedges_total',
        'funnel_root_degraded_total',
        'funnel_root_live_replicas',
      ]) {
        assert.ok(exprs.includes(m), `cluster row lacks ${m}`);
      }
      assert.match(exprs, /histogram_quantile\(0\.99, sum by \(le, shard\) \(rate\(funnel_root_shard_duration_seconds_bucket/);
      assert.match(exprs, /sum by \(shard\) \(rate\(funnel_root_degraded_total/);
      assert.match(exprs, /sum by \(kind\) \(rate\(funnel_replication_applied_total/);
    });
  });

  describe('metric names', () => {
    let known: Set<string>;
    before(async () => {
      known = new Set([...METRIC_NAMES, ...(await defaultMetricNames()), 'up']);
    });

    it('when the dashboard names a metric, then the service exports it (METRIC_NAMES or a prom-client default)', () => {
      const exprs = dashboardExprs();
      assert.ok(exprs.length > 20);
      assert.deepEqual(unknownMetrics(exprs, known), []);
    });

    it('when an alert or recording rule names a metric, then the service exports it, and every recorded series it uses is defined in the file', () => {
      const rules = alertRules();
      assert.deepEqual(unknownMetrics(rules.map((r) => String(r.expr)), known), []);
      const recorded = new Set(rules.filter((r) => r.record).map((r) => r.record as string));
      for (const r of rules) {
        for (const m of String(r.expr).matchAll(/\b(funnel:[a-z0-9_:]+)/g)) assert.ok(recorded.has(m[1]), `${r.alert ?? r.record}: ${m[1]} is not recorded`);
      }
    });

    it('when the name extractor reads PromQL, then it finds metrics and histogram series but not label values', () => {
      assert.deepEqual(metricNames('sum(rate(funnel_rpc_duration_seconds_bucket{service="funnel_x",job="up"}[5m])) / up'), ['funnel_rpc_duration_seconds_bucket', 'up']);
      assert.deepEqual(unknownMetrics(['funnel_rpc_duration_seconds_bucket', 'funnel_nope_total'], new Set(['funnel_rpc_duration_seconds'])).length, 1);
    });
  });

  describe('alert rules', () => {
    it('when the rules are read, then every alert has expr, for, a severity, a summary and a one-line runbook, and names are unique', () => {
      const alerts = alertRules().filter((r) => r.alert);
      assert.ok(alerts.length >= 8);
      assert.equal(new Set(alerts.map((a) => a.alert)).size, alerts.length);
      for (const a of alerts) {
        assert.ok(String(a.expr).trim(), `${a.alert}: expr`);
        assert.match(String(a.for), /^\d+[smh]$/, `${a.alert}: for`);
        assert.ok(['critical', 'warning'].includes(a.labels?.severity), `${a.alert}: severity`);
        assert.ok(String(a.annotations?.summary ?? '').trim(), `${a.alert}: summary`);
        const runbook = String(a.annotations?.runbook ?? '');
        assert.ok(runbook.trim().length > 20, `${a.alert}: runbook`);
        assert.ok(!runbook.trim().includes('\n'), `${a.alert}: runbook must be one line`);
      }
    });

    it('when the SLO alerts are read, then availability burns against 99.9% over 5m and 1h excluding OK and INVALID_ARGUMENT, p99 is held to 25 ms for 10m and degraded to 1%', () => {
      const rules = alertRules();
      const byName = new Map<string, Obj>(rules.map((r) => [r.alert ?? r.record, r]));
      const rule = (name: string): Obj => {
        const r = byName.get(name);
        assert.ok(r, `no rule ${name}`);
        return r;
      };
      const fast = rule('FunnelRetrieveErrorBudgetFastBurn');
      assert.match(fast.expr, /ratio_rate1h > \(14\.4 \* 0\.001\)/);
      assert.match(fast.expr, /ratio_rate5m > \(14\.4 \* 0\.001\)/);
      assert.match(rule('funnel:retrieve_errors:ratio_rate5m').expr, /code!~"OK\|INVALID_ARGUMENT"/);
      const p99 = rule('FunnelRetrieveLatencyP99High');
      assert.match(p99.expr, /p99_rate5m > 0\.025/);
      assert.equal(p99.for, '10m');
      assert.match(rule('FunnelDegradedRateHigh').expr, /> 0\.01$/m);
      assert.match(rule('FunnelShedRateHigh').expr, /> 0\.01$/m);
      for (const name of ['FunnelConfigReloadFailed', 'FunnelNoTargets', 'FunnelAllTargetsDown', 'FunnelMetricsAbsent', 'FunnelMemoryHigh']) {
        rule(name);
      }
    });

    it('when the cluster alerts are read, then replica lag (warning; critical near cluster.max_lag_seconds), parked messages, NATS disconnected, degraded shards and live replicas (< 2 warning, 0 critical) are covered', () => {
      const rules = new Map<string, Obj>(alertRules().filter((r) => r.alert).map((r) => [r.alert, r]));
      const rule = (name: string, severity: string, forDuration: string, expr: RegExp): void => {
        const r = rules.get(name);
        assert.ok(r, `no alert ${name}`);
        assert.equal(r.labels.severity, severity, `${name}: severity`);
        assert.equal(r.for, forDuration, `${name}: for`);
        assert.match(String(r.expr), expr, `${name}: expr`);
      };
      rule('FunnelReplicaLagging', 'warning', '2m', /funnel_replication_lag_seconds > 10\b/);
      rule('FunnelReplicaLagCritical', 'critical', '2m', /funnel_replication_lag_seconds > 0\.8 \* \d+/);
      rule('FunnelReplicationParked', 'warning', '0m', /increase\(funnel_replication_parked_total\[10m\]\) > 0/);
      rule('FunnelNatsDisconnected', 'warning', '1m', /funnel_replication_connected == 0/);
      rule('FunnelNatsDown', 'critical', '1m', /max\(funnel_replication_connected\) == 0/);
      rule('FunnelSnapshotFailing', 'warning', '30m', /increase\(funnel_replication_snapshots_total\{outcome="failed"\}\[1h\]\)\) > 0/);
      rule('FunnelRootShardDegraded', 'warning', '5m', /sum by \(shard\) \(rate\(funnel_root_degraded_total\[5m\]\)\) > 0/);
      rule('FunnelShardReplicasMissing', 'warning', '5m', /max by \(shard\) \(funnel_root_live_replicas\) < 2/);
      rule('FunnelShardDown', 'critical', '1m', /max by \(shard\) \(funnel_root_live_replicas\) == 0/);
      const tested = read('alerts', 'funnel-rules.test.yaml');
      for (const name of [...rules.keys()].filter((n) => /Replica|Replication|Nats|Shard|Snapshot/.test(n))) {
        assert.match(tested, new RegExp(`\\b${name}\\b`), `${name} has no promtool test case`);
      }
    });

    it('when the memory alert and the Deployment are read, then the alert threshold is 85% of the container memory limit', () => {
      const mem = alertRules().find((r) => r.alert === 'FunnelMemoryHigh') as Obj;
      const gib = Number(/0\.85 \* (\d+) \* 1024 \* 1024 \* 1024/.exec(mem.expr)?.[1]);
      const container = k8s('deployment.yaml').spec.template.spec.containers.find((c: Obj) => c.name === 'funnel');
      assert.equal(gib * 1024 ** 3, quantity(container.resources.limits.memory));
    });

    it('when promtool is on PATH, then `promtool check rules`, its rule unit tests and `promtool check config` pass', function () {
      // CI (.ci/run) installs promtool and sets FUNNEL_REQUIRE_PROMTOOL, so there the check cannot be skipped.
      if (!onPath('promtool')) {
        if (process.env.FUNNEL_REQUIRE_PROMTOOL) throw new Error('promtool is not on PATH but FUNNEL_REQUIRE_PROMTOOL is set (.ci/run installs Debian\'s prometheus package)');
        skipWith(this, 'promtool is not on PATH (Debian: apt-get install prometheus)');
      }
      let r = run('promtool', ['check', 'rules', 'ops/alerts/funnel-rules.yaml']);
      assert.equal(r.status, 0, r.out);
      r = run('promtool', ['test', 'rules', 'ops/alerts/funnel-rules.test.yaml']);
      assert.equal(r.status, 0, r.out);
      r = run('promtool', ['check', 'config', 'ops/compose/prometheus.yml']);
      assert.equal(r.status, 0, r.out);
    });
  });

  describe('kubernetes', () => {
    const deployment = () => k8s('deployment.yaml');
    const podSpec = () => deployment().spec.template.spec as Obj;
    const server = () => (podSpec().containers as Obj[]).find((c) => c.name === 'funnel') as Obj;
    const serverArgs = () => [...(server().command ?? []), ...(server().args ?? [])].map(String);

    it('when the kustomization is read, then it lists exactly the object files, each of the expected kind', () => {
      const kust = yamlOne('k8s', 'kustomization.yaml');
      const files = fs.readdirSync(rel('k8s')).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml');
      assert.deepEqual([...kust.resources].sort(), files.sort());
      const kinds = Object.fromEntries(files.map((f) => [f, `${k8s(f).apiVersion}/${k8s(f).kind}`]));
      assert.deepEqual(kinds, {
        'configmap.yaml': 'v1/ConfigMap',
        'deployment.yaml': 'apps/v1/Deployment',
        'hpa.yaml': 'autoscaling/v2/HorizontalPodAutoscaler',
        'pdb.yaml': 'policy/v1/PodDisruptionBudget',
        'service.yaml': 'v1/Service',
      });
      for (const i of kust.images ?? []) assert.ok(i.newTag && i.newTag !== 'latest', `image ${i.name} tag`);
    });

    it('when the Deployment runs serve, then it listens on 0.0.0.0:50051 with metrics on 9464, matching the scrape annotations and the Service', () => {
      const args = serverArgs();
      assert.ok(args.includes('serve'));
      assert.equal(argValue(args, '--host'), '0.0.0.0');
      assert.equal(argValue(args, '--port') ?? '50051', '50051');
      assert.equal(argValue(args, '--metrics-port') ?? '9464', '9464');
      const ann = deployment().spec.template.metadata.annotations as Obj;
      assert.equal(ann['prometheus.io/scrape'], 'true');
      assert.equal(ann['prometheus.io/port'], '9464');
      const svc = k8s('service.yaml');
      assert.equal(svc.spec.clusterIP, 'None');
      const ports = Object.fromEntries((svc.spec.ports as Obj[]).map((p) => [p.name, p.port]));
      assert.deepEqual(ports, { grpc: 50051, metrics: 9464 });
      const containerPorts = Object.fromEntries((server().ports as Obj[]).map((p) => [p.name, p.containerPort]));
      for (const p of svc.spec.ports as Obj[]) assert.equal(containerPorts[p.targetPort] ?? p.targetPort, p.port);
    });

    it('when the Deployment is probed, then startup, readiness (funnel.v1.Retrieval) and liveness ("") are native gRPC probes and startup allows minutes for the index load', () => {
      const c = server();
      for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) assert.equal(c[probe]?.grpc?.port, 50051, probe);
      assert.equal(c.readinessProbe.grpc.service, 'funnel.v1.Retrieval');
      assert.equal(c.livenessProbe.grpc.service ?? '', '');
      const startupSeconds = c.startupProbe.periodSeconds * c.startupProbe.failureThreshold;
      assert.ok(startupSeconds >= 300, `startup probe allows only ${startupSeconds}s`);
      assert.ok(c.livenessProbe.periodSeconds * c.livenessProbe.failureThreshold >= 30, 'liveness too eager');
    });

    it('when a pod is deleted, then the grace period outlasts preStop plus --drain-timeout-ms', () => {
      const c = server();
      const pre = c.lifecycle.preStop as Obj;
      const preStopSeconds = pre.sleep ? Number(pre.sleep.seconds) : Number(/^sleep$/.test(pre.exec.command[0]) ? pre.exec.command[1] : NaN);
      assert.ok(preStopSeconds >= 1 && preStopSeconds <= 30, `preStop ${preStopSeconds}`);
      const drainMs = Number(argValue(serverArgs(), '--drain-timeout-ms') ?? 10_000);
      const grace = podSpec().terminationGracePeriodSeconds;
      assert.ok(grace > preStopSeconds + drainMs / 1000, `grace ${grace}s <= preStop ${preStopSeconds}s + drain ${drainMs / 1000}s`);
    });

    it('when the pod runs, then it is non-root with a read-only root, resources bounded, every mount backed by a volume and the admin token read from the funnel-admin-token Secret', () => {
      const spec = podSpec();
      assert.equal(spec.securityContext.runAsNonRoot, true);
      const volumes = new Map((spec.volumes as Obj[]).map((v) => [v.name, v]));
      for (const c of [...(spec.initContainers ?? []), ...spec.containers] as Obj[]) {
        assert.equal(c.securityContext.readOnlyRootFilesystem, true, `${c.name}: read-only root`);
        assert.equal(c.securityContext.allowPrivilegeEscalation, false, `${c.name}`);
        assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory, `${c.name}: resources`);
        assert.ok(quantity(c.resources.limits.memory) >= quantity(c.resources.requests.memory));
        assert.ok(typeof c.image === 'string' && !c.image.endsWith(':latest'), `${c.name}: image`);
        for (const m of c.volumeMounts as Obj[]) assert.ok(volumes.has(m.name), `${c.name}: mount ${m.name} has no volume`);
      }
      const tokenFile = argValue(serverArgs(), '--admin-token-file') as string;
      const mount = (server().volumeMounts as Obj[]).find((m) => tokenFile.startsWith(`${m.mountPath}/`)) as Obj;
      assert.ok(mount, 'admin token file is not on a mount');
      const secret = volumes.get(mount.name)?.secret as Obj;
      assert.equal(secret?.secretName, 'funnel-admin-token');
      const key = path.posix.relative(mount.mountPath, tokenFile);
      assert.ok(!secret.items || secret.items.some((i: Obj) => i.path === key), `secret item ${key}`);
    });

    it('when the data is prepared, then an initContainer fills the emptyDir the server reads from the read-only catalog volume', () => {
      const spec = podSpec();
      const init = (spec.initContainers as Obj[])[0];
      const script = [...(init.command ?? []), ...(init.args ?? [])].join(' ');
      assert.match(script, /dist\/src\/cli\/main\.js ingest --catalog \S+ --data/);
      const volumes = new Map((spec.volumes as Obj[]).map((v) => [v.name, v]));
      const dataDir = argValue(serverArgs(), '--data') as string;
      const dataMount = (server().volumeMounts as Obj[]).find((m) => dataDir.startsWith(`${m.mountPath}/`)) as Obj;
      assert.ok(volumes.get(dataMount.name)?.emptyDir, 'data is not on an emptyDir');
      assert.ok((init.volumeMounts as Obj[]).some((m) => m.name === dataMount.name && m.mountPath === dataMount.mountPath));
      const catalogMount = (init.volumeMounts as Obj[]).find((m) => m.readOnly && volumes.get(m.name)?.persistentVolumeClaim) as Obj;
      assert.ok(catalogMount, 'catalog volume');
      assert.equal(volumes.get(catalogMount.name)?.persistentVolumeClaim.readOnly, true);
    });

    it('when the ConfigMap is mounted, then --config points into a directory mount (hot reload) and its funnel.yaml validates against the stage config schema', () => {
      const cm = k8s('configmap.yaml');
      const configFile = argValue(serverArgs(), '--config') as string;
      const mount = (server().volumeMounts as Obj[]).find((m) => configFile.startsWith(`${m.mountPath}/`)) as Obj;
      assert.ok(mount, '--config is not on a mount');
      assert.equal(mount.subPath, undefined, 'a subPath mount never sees ConfigMap updates');
      assert.equal(podSpec().volumes.find((v: Obj) => v.name === mount.name).configMap.name, cm.metadata.name);
      const key = path.posix.relative(mount.mountPath, configFile);
      const config = parseConfigText(cm.data[key], `configmap.yaml:${key}`);
      assert.equal(config.default_pipeline, 'default');
      assert.ok(config.pipelines.default && config.pipelines.explore);
      assert.ok(config.version.length > 0 && config.version !== 'builtin');
    });

    it('when the OTEL env is read, then traces go over OTLP gRPC with a parent-based sampler', () => {
      const env = Object.fromEntries((server().env as Obj[]).map((e) => [e.name, e.value]));
      assert.equal(env.OTEL_SERVICE_NAME, 'funnel');
      assert.equal(env.OTEL_TRACES_EXPORTER, 'otlp');
      assert.match(env.OTEL_EXPORTER_OTLP_ENDPOINT, /^http:\/\/.+:4317$/);
      assert.equal(env.OTEL_EXPORTER_OTLP_PROTOCOL, 'grpc');
      assert.match(env.OTEL_TRACES_SAMPLER, /^parentbased_/);
    });

    it('when the HPA, PDB and Service select pods, then they target the Deployment and its pod labels', () => {
      const labels = deployment().spec.template.metadata.labels as Obj;
      const matches = (sel: Obj) => Object.entries(sel).every(([k, v]) => labels[k] === v);
      assert.ok(matches(deployment().spec.selector.matchLabels));
      assert.ok(matches(k8s('service.yaml').spec.selector));
      assert.ok(matches(k8s('pdb.yaml').spec.selector.matchLabels));
      const hpa = k8s('hpa.yaml');
      assert.equal(hpa.spec.scaleTargetRef.kind, 'Deployment');
      assert.equal(hpa.spec.scaleTargetRef.name, deployment().metadata.name);
      assert.ok((hpa.spec.metrics as Obj[]).some((m) => m.type === 'Resource' && m.resource.name === 'cpu'));
      assert.ok(hpa.spec.minReplicas >= 2 && hpa.spec.maxReplicas > hpa.spec.minReplicas);
      const pdb = k8s('pdb.yaml').spec as Obj;
      assert.ok(pdb.maxUnavailable === 1 || pdb.minAvailable < hpa.spec.minReplicas, 'the PDB must allow a disruption at minReplicas');
    });

    it('when kubectl is on PATH, then `kubectl kustomize ops/k8s` builds the five objects', function () {
      if (!onPath('kubectl')) skipWith(this, 'kubectl is not on PATH (the structure checks above ran anyway)');
      const r = run('kubectl', ['kustomize', 'ops/k8s']);
      assert.equal(r.status, 0, r.out);
      const kinds = parseAllDocuments(r.out).map((d) => (d.toJS() as Obj).kind).sort();
      assert.deepEqual(kinds, ['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'PodDisruptionBudget', 'Service']);
    });
  });

  describe('kubernetes cluster', () => {
    const NATS_IMAGE = 'nats:2.10.22-alpine';
    const natsSet = () => clusterObject('StatefulSet', 'funnel-nats');
    const root = () => clusterObject('Deployment', 'funnel-root');
    const clusterConfig = () => clusterObject('ConfigMap', 'funnel-cluster-config');
    /** The workloads whose pods the cluster runs, the ingest Job's included. */
    const workloads = (): Obj[] => [...clusterObjects().filter((o) => ['StatefulSet', 'Deployment'].includes(o.kind)), ingestJob()];

    it('when the cluster kustomization is read, then it lists exactly its resource files, pins the funnel image like ops/k8s, and leaves the ingest Job out', () => {
      const kust = yamlOne('k8s', 'cluster', 'kustomization.yaml');
      assert.deepEqual([...kust.resources].sort(), clusterFiles());
      assert.deepEqual(clusterFiles(), ['config.yaml', 'nats.yaml', 'root.yaml', 'shard-0.yaml', 'shard-1.yaml']);
      assert.deepEqual(kust.images, yamlOne('k8s', 'kustomization.yaml').images, 'the same image as the single-node kustomization');
      for (const i of kust.images) assert.ok(i.newTag && i.newTag !== 'latest', `image ${i.name} tag`);
      assert.ok(!kust.resources.some((r: string) => r.includes('ingest')), 'the ingest Job is not a resource');
      assert.equal(ingestJob().kind, 'Job');
    });

    it('when kubectl is on PATH, then `kubectl kustomize ops/k8s/cluster` builds the 16 objects, every funnel container on the pinned image and NATS on its own', function () {
      if (!onPath('kubectl')) skipWith(this, 'kubectl is not on PATH (the structure checks ran anyway)');
      const r = run('kubectl', ['kustomize', 'ops/k8s/cluster']);
      assert.equal(r.status, 0, r.out);
      const objs = parseAllDocuments(r.out).map((d) => d.toJS() as Obj);
      const kinds: Record<string, number> = {};
      for (const o of objs) kinds[o.kind] = (kinds[o.kind] ?? 0) + 1;
      assert.deepEqual(kinds, { ConfigMap: 2, Deployment: 1, NetworkPolicy: 1, PodDisruptionBudget: 4, Service: 5, StatefulSet: 3 });
      const image = yamlOne('k8s', 'cluster', 'kustomization.yaml').images[0] as Obj;
      const images = objs.filter((o) => o.spec?.template).flatMap((o) => (o.spec.template.spec.containers as Obj[]).map((c) => `${o.metadata.name}/${c.name}=${c.image}`));
      assert.deepEqual(images.sort(), [
        `funnel-nats/nats=${NATS_IMAGE}`,
        `funnel-root/funnel=${image.newName}:${image.newTag}`,
        `funnel-shard-0/funnel=${image.newName}:${image.newTag}`,
        `funnel-shard-1/funnel=${image.newName}:${image.newTag}`,
      ]);
    });

    it('when a shard StatefulSet runs serve, then its --shard I/N matches its name and the shard count, --nats is the NATS client Service and --data lies on its volumeClaimTemplate mounted at /data', () => {
      const sets = shardSets();
      assert.equal(sets.length, 2);
      sets.forEach((sts, i) => {
        const name = sts.metadata.name as string;
        assert.equal(name, `funnel-shard-${i}`, 'shards numbered 0..N-1');
        const c = funnelContainer(sts);
        const args = commandLine(c);
        assert.ok(args.includes('serve'), `${name}: serve`);
        assert.equal(argValue(args, '--shard'), `${i}/${sets.length}`, `${name}: --shard`);
        assert.equal(argValue(args, '--nats'), natsClientUrl(), `${name}: --nats`);
        assert.equal(argValue(args, '--workers'), '1', `${name}: --workers`);
        assert.equal(argValue(args, '--host'), '0.0.0.0');
        const templates = sts.spec.volumeClaimTemplates as Obj[];
        assert.equal(templates.length, 1, `${name}: one claim template`);
        const claim = templates[0];
        assert.deepEqual(claim.spec.accessModes, ['ReadWriteOnce']);
        assert.ok(quantity(claim.spec.resources.requests.storage) >= 10 * 1024 ** 3, `${name}: data volume size`);
        const mount = (c.volumeMounts as Obj[]).find((m) => m.name === claim.metadata.name) as Obj;
        assert.equal(mount?.mountPath, '/data', `${name}: the claim is mounted at /data`);
        assert.ok(!(sts.spec.template.spec.volumes as Obj[]).some((v) => v.name === claim.metadata.name), `${name}: a pod volume shadows the claim`);
        // Below the mount: a fresh volume's root holds lost+found, never an empty directory.
        assert.match(argValue(args, '--data') as string, /^\/data\/[^/]+$/, `${name}: --data`);
        assert.equal(sts.spec.podManagementPolicy, 'Parallel', `${name}: replicas start together`);
      });
    });

    it('when the shard files are compared, then each is shard-0.yaml with only the shard number changed', () => {
      const normalize = (v: unknown, i: number, key = ''): unknown => {
        if (Array.isArray(v)) return v.map((x) => normalize(x, i));
        if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, normalize(x, i, k)]));
        if (typeof v !== 'string') return v;
        if (key === 'funnel.io/shard' && v === String(i)) return 'I';
        return v
          .replace(new RegExp(`funnel-shard-${i}\\b`, 'g'), 'funnel-shard-I')
          .replace(new RegExp(`^${i}/(\\d+)$`), 'I/$1')
          .replace(new RegExp(`funnel\\.shard=${i}$`), 'funnel.shard=I');
      };
      const shard0 = normalize(yamlDocs(rel('k8s', 'cluster', 'shard-0.yaml')), 0);
      for (let i = 1; i < shardSets().length; i++) {
        assert.deepEqual(normalize(yamlDocs(rel('k8s', 'cluster', `shard-${i}.yaml`)), i), shard0, `shard-${i}.yaml differs from shard-0.yaml beyond the shard number`);
      }
    });

    it("when the root runs, then --shards lists exactly every shard pod by its stable DNS name (POD.HEADLESS-SERVICE:50051), shards in order, as many as each StatefulSet's replicas", () => {
      const sets = shardSets();
      const expected = sets
        .map((sts) => {
          const svc = clusterObject('Service', sts.spec.serviceName);
          assert.equal(svc.spec.clusterIP, 'None', `${svc.metadata.name}: headless (stable pod DNS names)`);
          assert.ok(selects(svc.spec.selector, sts.spec.template.metadata.labels), `${svc.metadata.name} selects ${sts.metadata.name}'s pods`);
          const grpcPort = (svc.spec.ports as Obj[]).find((p) => p.name === 'grpc') as Obj;
          assert.equal(grpcPort.port, Number(argValue(commandLine(funnelContainer(sts)), '--port')));
          return Array.from({ length: sts.spec.replicas }, (_, j) => `${sts.metadata.name}-${j}.${svc.metadata.name}:${grpcPort.port}`).join(',');
        })
        .join(';');
      const args = commandLine(funnelContainer(root()));
      assert.ok(args.includes('root'), 'funnel root');
      assert.equal(argValue(args, '--shards'), expected);
      assert.equal(argValue(args, '--nats'), natsClientUrl());
      assert.equal(argValue(args, '--data'), undefined, 'the root is stateless');
      assert.ok(root().spec.replicas >= 2, 'root replicas');
      for (const sts of sets) assert.equal(sts.spec.replicas, 2, `${sts.metadata.name}: 2 replicas`);
    });

    it('when the root is exposed, then its headless Service is the one clients call, on the ports the pods listen on and announce for scraping', () => {
      for (const w of [root(), ...shardSets()]) {
        const c = funnelContainer(w);
        const args = commandLine(c);
        const ann = w.spec.template.metadata.annotations as Obj;
        assert.equal(ann['prometheus.io/scrape'], 'true', `${w.metadata.name}: scrape annotation`);
        assert.equal(ann['prometheus.io/port'], argValue(args, '--metrics-port'), `${w.metadata.name}: metrics port`);
        const ports = Object.fromEntries((c.ports as Obj[]).map((p) => [p.name, p.containerPort]));
        assert.deepEqual(ports, { grpc: Number(argValue(args, '--port')), metrics: Number(argValue(args, '--metrics-port')) });
      }
      const svc = clusterObject('Service', 'funnel-root');
      assert.equal(svc.spec.clusterIP, 'None', 'headless: clients balance with round_robin');
      assert.ok(selects(svc.spec.selector, root().spec.template.metadata.labels));
      assert.deepEqual(Object.fromEntries((svc.spec.ports as Obj[]).map((p) => [p.name, p.port])), { grpc: 50051, metrics: 9464 });
    });

    it('when shard and root pods are probed, then startup and readiness are native gRPC probes, a shard gets 15+ minutes to bootstrap, and its liveness avoids gRPC health (NOT_SERVING while it lags)', () => {
      for (const w of [...shardSets(), root()]) {
        const c = funnelContainer(w);
        const name = w.metadata.name;
        assert.equal(c.startupProbe.grpc?.port, 50051, `${name}: startup`);
        assert.equal(c.startupProbe.grpc.service ?? '', '', `${name}: startup service`);
        assert.equal(c.readinessProbe.grpc?.port, 50051, `${name}: readiness`);
        assert.equal(c.readinessProbe.grpc.service, 'funnel.v1.Retrieval', `${name}: readiness service`);
        assert.ok(c.livenessProbe.periodSeconds * c.livenessProbe.failureThreshold >= 30, `${name}: liveness too eager`);
      }
      for (const sts of shardSets()) {
        const c = funnelContainer(sts);
        const startupSeconds = c.startupProbe.periodSeconds * c.startupProbe.failureThreshold;
        assert.ok(startupSeconds >= 15 * 60, `${sts.metadata.name}: startup allows only ${startupSeconds}s to bootstrap`);
        assert.equal(c.livenessProbe.grpc, undefined, `${sts.metadata.name}: a gRPC health liveness probe restarts a lagging replica`);
        assert.equal(c.livenessProbe.httpGet?.path, '/metrics');
        assert.equal(c.livenessProbe.httpGet.port, 'metrics');
      }
      assert.equal(funnelContainer(root()).livenessProbe.grpc?.port, 50051, 'root liveness: gRPC health');
    });

    it('when a shard or root pod is deleted, then the grace period outlasts preStop plus the drain timeout', () => {
      for (const w of [...shardSets(), root()]) {
        const c = funnelContainer(w);
        const pre = c.lifecycle.preStop as Obj;
        const preStopSeconds = pre.sleep ? Number(pre.sleep.seconds) : Number(/^sleep$/.test(pre.exec.command[0]) ? pre.exec.command[1] : NaN);
        assert.ok(preStopSeconds >= 1 && preStopSeconds <= 30, `${w.metadata.name}: preStop ${preStopSeconds}`);
        const drainMs = Number(argValue(commandLine(c), '--drain-timeout-ms') ?? 10_000);
        const grace = w.spec.template.spec.terminationGracePeriodSeconds;
        assert.ok(grace > preStopSeconds + drainMs / 1000, `${w.metadata.name}: grace ${grace}s <= preStop ${preStopSeconds}s + drain ${drainMs / 1000}s`);
      }
    });

    it('when cluster pods run, then they are non-root with read-only roots and bounded resources, every mount is backed by a volume or claim template, and the admin token comes from funnel-admin-token', () => {
      for (const w of workloads()) {
        const spec = w.spec.template.spec as Obj;
        const name = w.metadata.name ?? w.metadata.generateName;
        assert.equal(spec.securityContext.runAsNonRoot, true, `${name}: runAsNonRoot`);
        assert.equal(spec.automountServiceAccountToken, false, `${name}: no service-account token`);
        const backing = new Set([...(spec.volumes ?? []), ...(w.spec.volumeClaimTemplates ?? []).map((t: Obj) => t.metadata)].map((v: Obj) => v.name));
        for (const c of [...(spec.initContainers ?? []), ...spec.containers] as Obj[]) {
          assert.equal(c.securityContext.readOnlyRootFilesystem, true, `${name}/${c.name}: read-only root`);
          assert.equal(c.securityContext.allowPrivilegeEscalation, false, `${name}/${c.name}`);
          assert.deepEqual(c.securityContext.capabilities?.drop, ['ALL'], `${name}/${c.name}: capabilities`);
          assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory, `${name}/${c.name}: resources`);
          assert.ok(quantity(c.resources.limits.memory) >= quantity(c.resources.requests.memory));
          assert.ok(pinned(c.image) || c.image === 'funnel', `${name}/${c.name}: image ${c.image}`);
          for (const m of c.volumeMounts as Obj[]) assert.ok(backing.has(m.name), `${name}/${c.name}: mount ${m.name} has no volume`);
        }
      }
      for (const w of [...shardSets(), root()]) {
        const spec = w.spec.template.spec as Obj;
        const c = funnelContainer(w);
        const tokenFile = argValue(commandLine(c), '--admin-token-file') as string;
        const mount = (c.volumeMounts as Obj[]).find((m) => tokenFile.startsWith(`${m.mountPath}/`)) as Obj;
        assert.ok(mount, `${w.metadata.name}: admin token file is not on a mount`);
        const secret = (spec.volumes as Obj[]).find((v) => v.name === mount.name)?.secret as Obj;
        assert.equal(secret?.secretName, 'funnel-admin-token');
        assert.ok(!secret.items || secret.items.some((i: Obj) => i.path === path.posix.relative(mount.mountPath, tokenFile)));
      }
    });

    it('when NATS is deployed, then it is 3 servers of the pinned image with JetStream on a volume per pod and cluster routes to all 3 through the headless Service', () => {
      const sts = natsSet();
      assert.equal(sts.spec.replicas, 3);
      assert.equal(sts.spec.podManagementPolicy, 'Parallel', 'the servers must start together to form a quorum');
      const c = (sts.spec.template.spec.containers as Obj[])[0];
      assert.equal(c.image, NATS_IMAGE);
      const configFile = argValue(commandLine(c), '--config') as string;
      const mount = (c.volumeMounts as Obj[]).find((m) => configFile.startsWith(`${m.mountPath}/`)) as Obj;
      const cmName = (sts.spec.template.spec.volumes as Obj[]).find((v) => v.name === mount.name)?.configMap?.name;
      const conf = String(clusterObject('ConfigMap', cmName).data[path.posix.relative(mount.mountPath, configFile)]);
      const jetstream = /^jetstream\s*\{([^}]*)\}/m.exec(conf)?.[1];
      assert.ok(jetstream, 'nats.conf: jetstream block (JetStream on)');
      const storeDir = /store_dir:\s*(\S+)/.exec(jetstream)?.[1];
      const claim = (sts.spec.volumeClaimTemplates as Obj[])[0];
      assert.equal(storeDir, (c.volumeMounts as Obj[]).find((m) => m.name === claim.metadata.name)?.mountPath, 'the JetStream store is on the claim');
      assert.match(conf, /^server_name:\s*\$POD_NAME$/m, 'a stable server name per pod');
      assert.equal((c.env as Obj[]).find((e) => e.name === 'POD_NAME')?.valueFrom?.fieldRef?.fieldPath, 'metadata.name');
      const clusterBlock = /^cluster\s*\{([\s\S]*?)^\}/m.exec(conf)?.[1] ?? '';
      const routes = [...(/routes:\s*\[([^\]]*)\]/.exec(clusterBlock)?.[1] ?? '').matchAll(/nats:\/\/(\S+)/g)].map((m) => m[1]);
      const headless = clusterObject('Service', sts.spec.serviceName);
      assert.equal(headless.spec.clusterIP, 'None');
      assert.equal(headless.spec.publishNotReadyAddresses, true, 'servers must find each other before they are ready');
      const clusterPort = (c.ports as Obj[]).find((p) => p.name === 'cluster')?.containerPort;
      assert.equal(/listen:\s*\S+:(\d+)/.exec(clusterBlock)?.[1], String(clusterPort));
      assert.deepEqual(routes, Array.from({ length: sts.spec.replicas }, (_, i) => `${sts.metadata.name}-${i}.${headless.metadata.name}:${clusterPort}`));
      const client = clusterObject('Service', 'funnel-nats');
      assert.ok(selects(client.spec.selector, sts.spec.template.metadata.labels));
      assert.ok(selects(headless.spec.selector, sts.spec.template.metadata.labels));
      assert.equal((client.spec.ports as Obj[])[0].port, (c.ports as Obj[]).find((p) => p.name === 'client')?.containerPort);
    });

    it('when NATS is probed and spread, then its probes ask /healthz?js-enabled-only=true on the monitoring port 8222 and no two servers share a node', () => {
      const spec = natsSet().spec.template.spec as Obj;
      const c = (spec.containers as Obj[])[0];
      const monitor = (c.ports as Obj[]).find((p) => p.name === 'monitor')?.containerPort;
      assert.equal(monitor, 8222);
      for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
        const get = c[probe]?.httpGet as Obj;
        assert.ok(get, `${probe}: httpGet`);
        assert.ok(get.port === 'monitor' || get.port === 8222, `${probe}: port`);
        assert.match(get.path, /^\/healthz\?js-/, `${probe}: path`);
      }
      assert.equal(c.livenessProbe.httpGet.path, '/healthz?js-enabled-only=true');
      assert.equal(c.startupProbe.httpGet.path, '/healthz?js-enabled-only=true');
      const anti = spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution as Obj[];
      assert.ok(anti.some((t) => t.topologyKey === 'kubernetes.io/hostname' && selects(t.labelSelector.matchLabels, natsSet().spec.template.metadata.labels)));
      assert.match(c.lifecycle.preStop.exec.command.join(' '), /--signal ldm=/, 'lame duck on stop');
    });

    it('when PodDisruptionBudgets, Services and workload selectors pick pods, then each picks exactly its own workload (NATS, each shard, root), and nothing of the single-node ops/k8s', () => {
      const mine = workloads();
      const selected = (sel: Obj) => mine.filter((w) => selects(sel, w.spec.template.metadata.labels)).map((w) => w.metadata.name ?? w.metadata.generateName);
      for (const w of clusterObjects().filter((o) => ['StatefulSet', 'Deployment'].includes(o.kind))) {
        assert.deepEqual(selected(w.spec.selector.matchLabels), [w.metadata.name], `${w.metadata.name}: its selector`);
      }
      const pdbs = clusterObjects().filter((o) => o.kind === 'PodDisruptionBudget');
      assert.deepEqual(pdbs.map((p) => p.metadata.name).sort(), ['funnel-nats', 'funnel-root', 'funnel-shard-0', 'funnel-shard-1']);
      for (const pdb of pdbs) {
        assert.deepEqual(selected(pdb.spec.selector.matchLabels), [pdb.metadata.name], `PDB ${pdb.metadata.name}`);
        assert.equal(pdb.spec.maxUnavailable, 1, `PDB ${pdb.metadata.name}: one at a time`);
      }
      const expectedService: Record<string, string> = {
        'funnel-nats': 'funnel-nats',
        'funnel-nats-headless': 'funnel-nats',
        'funnel-root': 'funnel-root',
        'funnel-shard-0': 'funnel-shard-0',
        'funnel-shard-1': 'funnel-shard-1',
      };
      const services = clusterObjects().filter((o) => o.kind === 'Service');
      assert.deepEqual(services.map((s) => s.metadata.name).sort(), Object.keys(expectedService).sort());
      for (const s of services) assert.deepEqual(selected(s.spec.selector), [expectedService[s.metadata.name]], `Service ${s.metadata.name}`);
      // Both kustomizations may share a namespace: no name clashes, no selector reaching the other's pods.
      const single = fs.readdirSync(rel('k8s')).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml').map((f) => k8s(f));
      const names = new Set(single.map((o) => `${o.kind}/${o.metadata.name}`));
      for (const o of clusterObjects()) assert.ok(!names.has(`${o.kind}/${o.metadata.name}`), `${o.kind}/${o.metadata.name} exists in ops/k8s too`);
      const singleSelector = k8s('deployment.yaml').spec.selector.matchLabels as Obj;
      for (const w of mine) assert.ok(!selects(singleSelector, w.spec.template.metadata.labels), `ops/k8s selects ${w.metadata.name}'s pods`);
    });

    it('when the NetworkPolicy guards NATS, then it covers the NATS pods and admits to the client port every pod that runs with --nats', () => {
      const policy = clusterObject('NetworkPolicy', 'funnel-nats');
      assert.ok(selects(policy.spec.podSelector.matchLabels, natsSet().spec.template.metadata.labels));
      const clientRule = (policy.spec.ingress as Obj[]).find((r) => (r.ports as Obj[]).some((p) => p.port === 4222)) as Obj;
      assert.ok(clientRule?.from?.length > 0, 'the client port is restricted');
      const clients = workloads().filter((w) => (w.spec.template.spec.containers as Obj[]).some((c) => argValue(commandLine(c), '--nats')));
      assert.equal(clients.length, shardSets().length + 2, 'shards, root and the ingest Job use NATS');
      for (const w of clients) {
        const labels = w.spec.template.metadata.labels as Obj;
        assert.ok((clientRule.from as Obj[]).some((f) => selects(f.podSelector?.matchLabels, labels)), `${w.metadata.name ?? w.metadata.generateName} cannot reach NATS`);
      }
      const monitorRule = (policy.spec.ingress as Obj[]).find((r) => (r.ports as Obj[]).some((p) => p.port === 8222)) as Obj;
      assert.equal(monitorRule?.from, undefined, 'the kubelet probes the monitoring port');
    });

    it('when the cluster ConfigMap is mounted, then --config points into a directory mount on the root and every shard, and its funnel.yaml validates with cluster.stream_replicas 3 and the default stream names', () => {
      const cm = clusterConfig();
      for (const w of [...shardSets(), root()]) {
        const c = funnelContainer(w);
        const configFile = argValue(commandLine(c), '--config') as string;
        const mount = (c.volumeMounts as Obj[]).find((m) => configFile.startsWith(`${m.mountPath}/`)) as Obj;
        assert.ok(mount, `${w.metadata.name}: --config is not on a mount`);
        assert.equal(mount.subPath, undefined, `${w.metadata.name}: a subPath mount never sees ConfigMap updates`);
        assert.equal((w.spec.template.spec.volumes as Obj[]).find((v) => v.name === mount.name)?.configMap?.name, cm.metadata.name);
        assert.equal(path.posix.relative(mount.mountPath, configFile), 'funnel.yaml');
      }
      const config = parseConfigText(cm.data['funnel.yaml'], 'cluster/config.yaml:funnel.yaml');
      assert.equal(config.cluster.stream_replicas, 3);
      assert.ok(config.cluster.stream_replicas <= natsSet().spec.replicas, 'R must not exceed the NATS servers');
      // The ingest Job passes no --config: it publishes to the default stream and subjects.
      const defaults = clusterSchema.parse({});
      assert.equal(config.cluster.stream, defaults.stream);
      assert.equal(config.cluster.subject_prefix, defaults.subject_prefix);
      assert.ok(config.cluster.max_lag_seconds > 0 && config.cluster.max_lag_messages > 0);
      assert.ok(config.version.length > 0 && config.version !== 'builtin');
      assert.ok(config.pipelines[config.default_pipeline]);
    });

    it('when the ingest Job is read, then it runs funnel ingest from the read-only catalog claim into the NATS client Service with --shards equal to the shard count, on the kustomization image, without retries', () => {
      const job = ingestJob();
      assert.equal(job.apiVersion, 'batch/v1');
      assert.ok(job.metadata.generateName && !job.metadata.name, 'generateName: one Job per load (kubectl create)');
      assert.equal(job.spec.backoffLimit, 0);
      const spec = job.spec.template.spec as Obj;
      assert.equal(spec.restartPolicy, 'Never');
      const c = (spec.containers as Obj[])[0];
      const args = commandLine(c);
      assert.deepEqual(args.slice(0, 3), ['node', 'dist/src/cli/main.js', 'ingest']);
      assert.equal(argValue(args, '--nats'), natsClientUrl());
      assert.equal(argValue(args, '--shards'), String(shardSets().length));
      const catalog = argValue(args, '--catalog') as string;
      const mount = (c.volumeMounts as Obj[]).find((m) => catalog.startsWith(`${m.mountPath}/`)) as Obj;
      assert.ok(mount?.readOnly, 'the catalog is on a read-only mount');
      const claim = (spec.volumes as Obj[]).find((v) => v.name === mount.name)?.persistentVolumeClaim as Obj;
      assert.equal(claim?.claimName, 'funnel-catalog');
      assert.equal(claim.readOnly, true);
      const image = yamlOne('k8s', 'cluster', 'kustomization.yaml').images[0] as Obj;
      assert.equal(c.image, `${image.newName}:${image.newTag}`, 'kustomize does not rewrite this file: keep its image in step');
    });

    it('when the shard pods and the alerts are read, then FunnelMemoryHigh matches the shard memory limit, FunnelReplicaLagCritical sits at 80% of cluster.max_lag_seconds and FunnelShardReplicasMissing counts the replicas per shard', () => {
      const rules = new Map<string, Obj>(alertRules().filter((r) => r.alert).map((r) => [r.alert, r]));
      const gib = Number(/0\.85 \* (\d+) \* 1024 \* 1024 \* 1024/.exec(rules.get('FunnelMemoryHigh')?.expr)?.[1]);
      for (const sts of shardSets()) assert.equal(quantity(funnelContainer(sts).resources.limits.memory), gib * 1024 ** 3, `${sts.metadata.name}: memory limit`);
      const maxLag = parseConfigText(clusterConfig().data['funnel.yaml']).cluster.max_lag_seconds;
      const lag = /funnel_replication_lag_seconds > 0\.8 \* (\d+(?:\.\d+)?)/.exec(rules.get('FunnelReplicaLagCritical')?.expr);
      assert.equal(Number(lag?.[1]), maxLag, 'FunnelReplicaLagCritical: 0.8 * cluster.max_lag_seconds');
      const missing = /funnel_root_live_replicas\) < (\d+)/.exec(rules.get('FunnelShardReplicasMissing')?.expr);
      for (const sts of shardSets()) assert.equal(Number(missing?.[1]), sts.spec.replicas, `FunnelShardReplicasMissing vs ${sts.metadata.name}'s replicas`);
    });
  });

  describe('compose health check', () => {
    let server: grpc.Server;
    let health: HealthImplementation;
    let port: number;
    const script = rel('compose', 'healthcheck.js');
    const check = (...args: string[]) =>
      new Promise<number>((resolve) => {
        // Async: the server answering the check runs on this process's event loop.
        execFile(process.execPath, [script, ...args], { cwd: ROOT, timeout: 20_000 }, (err) => resolve(err ? Number((err as { code?: number }).code ?? 1) : 0));
      });

    before(async () => {
      health = new HealthImplementation({ '': 'SERVING', 'funnel.v1.Retrieval': 'NOT_SERVING' });
      server = new grpc.Server();
      health.addToServer(server);
      port = await new Promise<number>((resolve, reject) =>
        server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
      );
    });
    after(() => server.forceShutdown());

    it('when the service is NOT_SERVING (loading or draining), then the check fails, and when it is SERVING, then it passes', async () => {
      assert.equal(await check(`127.0.0.1:${port}`, 'funnel.v1.Retrieval'), 1);
      health.setStatus('funnel.v1.Retrieval', 'SERVING');
      assert.equal(await check(`127.0.0.1:${port}`, 'funnel.v1.Retrieval'), 0);
      assert.equal(await check(`127.0.0.1:${port}`, ''), 0);
    });

    it('when nothing listens, then the check fails within its deadline', async () => {
      const free = await new Promise<number>((resolve, reject) => {
        const s = new grpc.Server();
        s.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => {
          s.forceShutdown();
          return err ? reject(err) : resolve(p);
        });
      });
      assert.equal(await check(`127.0.0.1:${free}`), 1);
    });
  });
});
