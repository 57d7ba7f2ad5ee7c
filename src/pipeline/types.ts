/**
 * The shapes the funnel's stages share: the validated query, the per-request context, the
 * candidate, and the Stage interface (product-mixer style: a stage holds business logic only;
 * runStage() wraps it with its timeout, fail-open policy, latency and telemetry).
 */
import type { PipelineConfig, PopularityConfig } from '../config/schema';
import type { AdTable } from '../serving/ad-table';
import type { Metric } from '../native/index';
import type { RankerFeatures } from '../stages/ranking/early-ranker';

/** Sourcing stages, and the bit each sets in Candidate.sources. */
export const SOURCES = ['Ann', 'Targeting', 'Popularity'] as const;
export type SourceName = (typeof SOURCES)[number];
export const SOURCE_BIT: Readonly<Record<SourceName, number>> = { Ann: 1, Targeting: 2, Popularity: 4 };

/** Names of the sourcing stages set in a `sources` bit mask, in SOURCES order. */
export function sourceNames(mask: number): string[] {
  return SOURCES.filter((s) => (mask & SOURCE_BIT[s]) !== 0);
}

/** A Retrieve request after validation. */
export interface RetrieveQuery {
  /** The request's request_id; the funnel assigns one (a UUID) when the request sent none, and the response carries it. */
  requestId: string;
  userId: string;
  /** Attribute name -> values (own properties only). */
  attributes: Record<string, string[]>;
  /** The user embedding (catalog dimension), or null when the request sent none. */
  embedding: Float32Array | null;
  /** Candidates to return (the configured default already applied). */
  numResults: number;
  excludeAdIds: ReadonlySet<string>;
  excludeAdvertiserIds: ReadonlySet<string>;
  blockedCategories: ReadonlySet<string>;
  /** Name of the pipeline serving the request. */
  pipeline: string;
  debug: boolean;
}

/** The request's eligible set: bit `id` set when the ad may be shown (targeting, servable, not excluded). */
export interface EligibleSet {
  /** The request's own pooled array (the cached targeting match ANDed with the servable ads, exclusions cleared). */
  bits: Uint32Array;
  count: number;
  /** AdTable epoch taken before the match: ads set or removed after it may not match `bits` any more. */
  epoch: number;
}

/** A funnel candidate: an internal ad id with what the stages learned about it. */
export interface Candidate {
  id: number;
  /** Bit mask of SOURCE_BIT: which sourcing stages produced it. */
  sources: number;
  /** Similarity to the user embedding (from the Ann stage, or filled in by the EarlyRanker), higher is better; NaN when not computed. */
  annScore: number;
  /** Rank within its best source (0 = first), for merge order before ranking. */
  sourceRank: number;
  /** EarlyRanker's eCPM; NaN before ranking. */
  score: number;
}

/** Read access to ad vectors (the ANN index's copies). */
export interface VectorSource {
  readonly dim: number;
  readonly metric: Metric;
  /** The stored vector of `id` (normalised for `cos`), or undefined when absent. */
  get(id: number): Float32Array | undefined;
  /** Optional batch read: copies the vectors of `ids` into `out` (row-major, zeros when absent); returns how many were present. One native call instead of one per id. */
  gather?(ids: Uint32Array, out: Float32Array): number;
  /** Optional: an upper bound of the length of every stored vector (stays valid as vectors change). */
  readonly normBound?: number;
}

/** Time-decayed engagement, read by the Popularity source and the EarlyRanker. */
export interface PopularityView {
  /** Ids by decayed engagement, best first: overall (segment undefined) or in `attribute=value`. */
  ranked(segment?: { attribute: string; value: string }): Uint32Array;
  /** Smoothed decayed click-through rate of `id` at `nowMs`: clicks / (impressions + prior). */
  rate(id: number, nowMs: number): number;
  /** Optional: an upper bound of rate(id, t) for every id and every t from now on (rates only decay between events). */
  rateBound?(): number;
}

/** What a stage sees of the serving state (one consistent view per request). */
export interface ServingView {
  readonly ads: AdTable;
  readonly vectors: VectorSource | null;
  readonly popularity: PopularityView;
  readonly popularityConfig: PopularityConfig;
  /** Data change sequence number. */
  readonly seq: number;
}

/** Per-request context handed to every stage. */
export interface StageContext {
  readonly query: RetrieveQuery;
  readonly pipeline: PipelineConfig;
  readonly state: ServingView;
  /** Request time, epoch ms, fixed for the whole request (flight windows, budgets, pacing). */
  readonly nowMs: number;
  /** Aborted when the stage times out or the request's deadline passes. */
  readonly signal: AbortSignal;
  /** The eligible set (null when the Eligibility stage failed: nothing may then be returned). */
  readonly eligible: EligibleSet | null;
  /** For a sourcing stage: the lists of the sources that started before it, when they end (null when one failed, timed out or was skipped). Targeting's walk bounds similarity by Ann's. */
  readonly sourced?: Readonly<Partial<Record<SourceName, Promise<Candidate[] | null>>>>;
  /** Set for the EarlyRanker of a request whose features are logged (`--feature-log`): the ranker hands it what it ranked. */
  readonly rankedFeatures?: RankedFeaturesSink;
  /** Adds a key=value to the stage's detail (StageStats.detail, span attributes). */
  note(key: string, value: string | number | boolean): void;
  /** Counts `count` candidates this stage removed for `reason` (a reason code README lists; adds up over calls). */
  drop(reason: string, count: number): void;
}

/**
 * Receives what the EarlyRanker ranked, for a request whose features are logged: `kept` (its
 * answer, best first), `ranked` (every candidate it scored, kept ones included, each with its
 * score) and `featuresOf` (the features it scored a candidate with, computed on demand in the
 * same synchronous run). Called inside the stage's run; never throws.
 */
export type RankedFeaturesSink = (kept: readonly Candidate[], ranked: readonly Candidate[], featuresOf: (c: Candidate) => RankerFeatures) => void;

/**
 * The note key of a stage that answered by its fallback path (the EarlyRanker's linear weights
 * when its model failed or was late); its value says why. The funnel names such a stage in
 * `degraded_stages`, as it names one that failed.
 */
export const FALLBACK_NOTE = 'fallback';

/** A funnel stage: a name (also its config key) and business logic only. */
export interface Stage<In, Out> {
  readonly name: string;
  run(ctx: StageContext, input: In): Promise<Out> | Out;
}

/** Reports of one stage run, as the executor saw it. */
export interface StageReport {
  name: string;
  status: 'ok' | 'timeout' | 'error' | 'skipped';
  candidatesIn: number;
  candidatesOut: number;
  latencyMs: number;
  /** The time limit the stage ran under, ms (absent for skipped stages). */
  limitMs?: number;
  detail: Record<string, string | number | boolean>;
  /** Candidates the stage removed, by reason code (only reasons with a count > 0). */
  dropped: Record<string, number>;
  error?: string;
}
