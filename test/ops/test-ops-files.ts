/**
 * Checks what SREs deploy (ops/): every YAML and JSON file parses; the compose stack, the
 * Kubernetes objects, the alert rules and the Grafana dashboard have the shape they need; every
 * metric their PromQL names is one the service exports; the ConfigMap's stage config validates;
 * the compose health check answers by the health service. Where promtool and kubectl are on
 * PATH, they check the rules (including their unit tests), the Prometheus config and the
 * kustomization too; otherwise those cases are skipped, saying so.
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
