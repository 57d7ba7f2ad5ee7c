/**
 * Reads the YAML stage config: resolves pipeline `inherits` (a pipeline starts as a deep copy of
 * its parent's raw blocks, then its own keys override, as Vespa rank profiles), validates with
 * the zod schema and reports every problem as `path: reason`. The EarlyRanker's ONNX models are
 * part of the config: each is read, validated and loaded with it (README, "Early ranker
 * models"), and a model that fails is a config problem like any other.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseDocument } from 'yaml';
import { loadModel, loadModelSync, type ModelRole } from '../stages/ranking/onnx-host';
import { configSchema, type Config, type OnnxModelConfig } from './schema';

/** A config that does not parse or validate; `issues` are `path: reason` lines. */
export class ConfigError extends Error {
  readonly code = 'ERR_CONFIG';
  constructor(
    readonly source: string,
    readonly issues: string[],
  ) {
    super(`${source}: invalid config:\n  ${issues.join('\n  ')}`);
  }
}

type Raw = Record<string, unknown>;
const isObject = (v: unknown): v is Raw => v !== null && typeof v === 'object' && !Array.isArray(v);

function deepMerge(base: unknown, over: unknown): unknown {
  if (!isObject(base) || !isObject(over)) return over === undefined ? structuredClone(base) : structuredClone(over);
  // A block of another `kind` (an EarlyRanker model) replaces its parent's instead of merging with it.
  if ('kind' in over && over.kind !== base.kind) return structuredClone(over);
  const out: Raw = structuredClone(base);
  for (const [k, v] of Object.entries(over)) out[k] = k in out ? deepMerge(out[k], v) : structuredClone(v);
  return out;
}

function formatPath(path: ReadonlyArray<PropertyKey>): string {
  return path.map((p) => (typeof p === 'number' ? `[${p}]` : String(p))).join('.').replace(/\.\[/g, '[') || '(root)';
}

/** Resolves `inherits` chains of raw pipelines in place; problems are appended to `issues`. */
function resolveInherits(raw: Raw, issues: string[]): void {
  const pipelines = raw.pipelines;
  if (!isObject(pipelines)) return;
  const resolved = new Map<string, Raw>();
  const resolve = (name: string, chain: string[]): Raw | undefined => {
    if (resolved.has(name)) return resolved.get(name);
    const p = pipelines[name];
    if (!isObject(p)) return undefined;
    const parent = p.inherits;
    let out: Raw;
    if (parent === undefined) {
      out = structuredClone(p);
    } else if (typeof parent !== 'string') {
      issues.push(`pipelines.${name}.inherits: expected the name of a pipeline`);
      return undefined;
    } else if (chain.includes(parent)) {
      issues.push(`pipelines.${name}.inherits: cycle ${[...chain, name, parent].join(' -> ')}`);
      return undefined;
    } else if (!isObject(pipelines[parent])) {
      issues.push(`pipelines.${name}.inherits: no pipeline named "${parent}"`);
      return undefined;
    } else {
      const base = resolve(parent, [...chain, name]);
      if (!base) return undefined;
      const own = structuredClone(p);
      delete own.inherits;
      out = deepMerge(base, own) as Raw;
      delete out.description;
      if (own.description !== undefined) out.description = own.description;
    }
    delete out.inherits;
    resolved.set(name, out);
    return out;
  };
  for (const name of Object.keys(pipelines)) {
    const r = resolve(name, []);
    if (r) pipelines[name] = r;
  }
}

/** How a config's ONNX models are handled while it is parsed. */
export interface ParseOptions {
  /** Directory relative model paths start from (default: the directory of `source` when it names a file, else the working directory). */
  baseDir?: string;
  /** `load` (default): load and validate them now, blocking until done (start, CLI); `skip`: leave that to loadConfigModels() (hot reload). */
  models?: 'load' | 'skip';
}

/** Each ONNX model block of `config`, with its config path and the worker role it runs in. */
function modelBlocks(config: Config): { where: string; cfg: OnnxModelConfig; role: ModelRole }[] {
  const out: { where: string; cfg: OnnxModelConfig; role: ModelRole }[] = [];
  for (const [name, p] of Object.entries(config.pipelines)) {
    const r = p.stages.EarlyRanker;
    const where = `pipelines.${name}.stages.EarlyRanker`;
    if (r.model.kind === 'onnx') out.push({ where: `${where}.model`, cfg: r.model, role: 'serve' });
    if (r.shadow_model?.kind === 'onnx') out.push({ where: `${where}.shadow_model`, cfg: r.shadow_model, role: 'shadow' });
  }
  return out;
}

function defaultBaseDir(source: string): string {
  try {
    if (fs.statSync(source).isFile()) return path.dirname(path.resolve(source));
  } catch {
    /* not a file: a label such as "builtin" */
  }
  return process.cwd();
}

/** Loads and validates every ONNX model of `config` without blocking (hot reload); throws ConfigError naming each model that fails. */
export async function loadConfigModels(config: Config, source = 'config'): Promise<void> {
  const blocks = modelBlocks(config);
  const issues: string[] = [];
  for (const b of blocks) {
    try {
      await loadModel(b.cfg, b.role);
    } catch (err) {
      issues.push(`${b.where}: ${b.cfg.path}: ${(err as Error).message}`);
    }
  }
  if (issues.length > 0) throw new ConfigError(source, issues);
}

/** Validates a parsed (plain object) config; throws ConfigError listing every problem. */
export function parseConfigObject(raw: unknown, source = 'config', options: ParseOptions = {}): Config {
  if (raw === null || raw === undefined) raw = {};
  if (!isObject(raw)) throw new ConfigError(source, ['(root): expected a mapping']);
  const copy = structuredClone(raw);
  const issues: string[] = [];
  resolveInherits(copy, issues);
  if (issues.length > 0) throw new ConfigError(source, issues);
  const parsed = configSchema.safeParse(copy);
  if (!parsed.success) {
    throw new ConfigError(
      source,
      parsed.error.issues.map((i) => `${formatPath(i.path)}: ${i.message}`),
    );
  }
  const config = parsed.data;
  const blocks = modelBlocks(config);
  if (blocks.length > 0) {
    const base = options.baseDir ?? defaultBaseDir(source);
    for (const b of blocks) b.cfg.path = path.resolve(base, b.cfg.path);
    if (options.models !== 'skip') {
      for (const b of blocks) {
        try {
          loadModelSync(b.cfg, b.role);
        } catch (err) {
          issues.push(`${b.where}: ${b.cfg.path}: ${(err as Error).message}`);
        }
      }
      if (issues.length > 0) throw new ConfigError(source, issues);
    }
  }
  return config;
}

/** Parses YAML text into a validated config. */
export function parseConfigText(text: string, source = 'config', options: ParseOptions = {}): Config {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      source,
      doc.errors.map((e) => `line ${e.linePos?.[0]?.line ?? '?'}: ${e.message.split('\n')[0]}`),
    );
  }
  return parseConfigObject(doc.toJS(), source, options);
}

/** Reads and validates a YAML config file. */
export function loadConfigFile(file: string): Config {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [`cannot read: ${(err as Error).message}`]);
  }
  return parseConfigText(text, file);
}

/** The built-in config: every default. */
export function defaultConfig(): Config {
  return parseConfigObject({}, 'builtin');
}
