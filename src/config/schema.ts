/**
 * The service configuration: server limits and the stage knobs of each named pipeline, validated
 * by zod. Every knob has a default, so an empty file (or none) is a complete config; `describe`
 * texts are the documentation `funnel config print` and README.md show.
 */
import { z } from 'zod';

const int = (min: number, max: number) => z.number().int().min(min).max(max);
const ms = (def: number, what: string) => int(0, 600_000).default(def).describe(`${what} (milliseconds)`);

/** Fault injection of one stage, for drills and tests: delays or fails its runs. */
const faultSchema = z
  .object({
    delay_ms: int(0, 600_000).default(0).describe('extra latency added to every run of the stage'),
    error_rate: z.number().min(0).max(1).default(0).describe('fraction of runs that fail (0..1)'),
  })
  .strict()
  .default({ delay_ms: 0, error_rate: 0 });

const stageBase = {
  timeout_ms: ms(50, 'the stage is dropped (and named in degraded_stages) when it runs longer'),
  fault: faultSchema,
};

/** Eligibility: the request's allowed set (targeting AND servable, minus exclusions). */
export const eligibilityStageSchema = z
  .object({ ...stageBase, timeout_ms: ms(50, 'time limit of the targeting match') })
  .strict();

/** Ann sourcing: filtered HNSW search on the user embedding. */
export const annStageSchema = z
  .object({
    ...stageBase,
    enabled: z.boolean().default(true).describe('run the stage (it is skipped anyway for requests without user_embedding)'),
    k: int(1, 10_000).default(50).describe('candidates to source'),
    ef: int(1, 10_000).default(64).describe('HNSW beam width (raised to k when lower)'),
  })
  .strict();

/** Targeting sourcing: eligible ads by a prior. */
export const targetingStageSchema = z
  .object({
    ...stageBase,
    enabled: z.boolean().default(true).describe('run the stage'),
    k: int(1, 10_000).default(64).describe('candidates to source'),
    order: z
      .enum(['ranker', 'prior'])
      .default('ranker')
      .describe(
        "ranker: a threshold walk over two static orders (bid, and the EarlyRanker's static log-eCPM key) that scores what it reads with the EarlyRanker's own model and stops once no unread ad can beat its k-th best (a proven bound); prior: the k eligible ads of best `prior`",
      ),
    max_steps: int(1, 100_000_000)
      .default(50_000)
      .describe('order entries the ranker walk may read (both orders together) before it stops without the bound (noted stop=cap)'),
    prior: z
      .object({
        bid: z.number().min(0).max(4).default(1).describe('exponent of bid_micros in the prior'),
        quality: z.number().min(0).max(4).default(1).describe('exponent of quality'),
        ctr_prior: z.number().min(0).max(4).default(1).describe('exponent of ctr_prior'),
      })
      .strict()
      .default({ bid: 1, quality: 1, ctr_prior: 1 })
      .describe('prior = bid^a * quality^b * ctr_prior^c; eligible ads are sourced in its order'),
  })
  .strict();

/** Popularity sourcing: time-decayed engagement, per segment and overall. */
export const popularityStageSchema = z
  .object({
    ...stageBase,
    enabled: z.boolean().default(true).describe('run the stage'),
    k: int(1, 10_000).default(50).describe('candidates to source'),
    segment_share: z.number().min(0).max(1).default(0.5).describe("share of k taken from the request's segments first; the rest from overall popularity"),
  })
  .strict();

/** Filters: the eligibility re-check (always on) and pacing. */
export const filtersStageSchema = z
  .object({
    ...stageBase,
    pacing: z
      .object({
        enabled: z.boolean().default(true).describe('throttle ads whose spend runs ahead of the day’s schedule'),
        curve: z
          .array(z.tuple([z.number().min(0).max(1), z.number().min(0).max(1)]))
          .min(2)
          .default([
            [0, 0],
            [1, 1],
          ])
          .describe('[day fraction, budget fraction] points, piecewise linear, increasing: the spend schedule over the UTC day')
          .refine((c) => c[0][0] === 0 && c[c.length - 1][0] === 1, 'must start at day fraction 0 and end at 1')
          .refine((c) => c.every((p, i) => i === 0 || (p[0] > c[i - 1][0] && p[1] >= c[i - 1][1])), 'points must increase'),
        tolerance: z.number().min(0).max(10).default(0.1).describe('an ad is throttled when spend/budget > schedule + tolerance'),
      })
      .strict()
      .default({ enabled: true, curve: [[0, 0], [1, 1]], tolerance: 0.1 }),
  })
  .strict();

/** The EarlyRanker's features, in the order of its linear weights (CONTRACT sections 2 and 7): the names an ONNX model's `features` may list. */
export const RANKER_FEATURES = ['ann_similarity', 'ctr_prior_logit', 'popularity_rate', 'quality', 'source_ann', 'source_targeting', 'source_popularity'] as const;
export type RankerFeatureName = (typeof RANKER_FEATURES)[number];

/** The default pCTR model: sigmoid over the stage's `weights`. */
const linearModelSchema = z.object({ kind: z.literal('linear') }).strict();

/** An ONNX pCTR model (CONTRACT section 7): one float32 input [batch, len(features)], one float32 output [batch] or [batch, 1] in [0, 1]. */
const onnxModelSchema = z
  .object({
    kind: z.literal('onnx'),
    path: z.string().min(1).describe('the .onnx file; a relative path is taken from the config file’s directory. Read, validated and loaded once per config load'),
    features: z
      .array(z.enum(RANKER_FEATURES))
      .min(1)
      .max(RANKER_FEATURES.length)
      .refine((f) => new Set(f).size === f.length, 'lists a feature twice')
      .describe('the input columns, in order: names of the linear weights (bias excluded)'),
    input: z.string().min(1).nullable().default(null).describe("the model input's name; null = the model's only input, whatever its name"),
    output: z.string().min(1).nullable().default(null).describe("the output holding pCTR; null = the model's only output"),
    threads: int(1, 64).default(1).describe('onnxruntime intra-op threads of the model’s worker thread'),
    fault: faultSchema.describe('fault injection of the model alone (drills, tests): delays or fails its runs, as a late or broken model would'),
  })
  .strict();

const modelSchema = z.discriminatedUnion('kind', [linearModelSchema, onnxModelSchema]);
const shadowShare = z.number().min(0).max(1).default(0.1).describe('share of requests the shadow model scores too (0..1)');

/** EarlyRanker: eCPM = bid x pCTR with a logistic pCTR model. */
export const earlyRankerStageSchema = z
  .object({
    ...stageBase,
    keep: int(1, 100_000).default(300).describe('candidates kept after ranking (the depth the diversifier sees)'),
    model: modelSchema
      .default({ kind: 'linear' })
      .describe(
        'the pCTR model: {kind: linear} (the weights below) or {kind: onnx, path, features}. A model that is late (past timeout_ms less a reserve) or fails falls back to the weights for that request, and the stage is named in degraded_stages',
      ),
    shadow_model: z
      .discriminatedUnion('kind', [linearModelSchema.extend({ sample: shadowShare }), onnxModelSchema.extend({ sample: shadowShare })])
      .nullable()
      .default(null)
      .describe('a second model scoring a sampled share of requests off the answer path; its rank correlation and pCTR drift against the serving model go to metrics. null = none'),
    weights: z
      .object({
        bias: z.number().default(-1.0),
        ann_similarity: z.number().default(2.0).describe('similarity of user and ad embeddings (dot, cosine or -L2 by metric)'),
        ctr_prior_logit: z.number().default(1.0).describe('logit of the ad’s ctr_prior'),
        popularity_rate: z.number().default(5.0).describe('smoothed, time-decayed click-through rate'),
        quality: z.number().default(0.5),
        source_ann: z
          .number()
          .default(0.0)
          .describe('1 when Ann sourced the candidate; 0 by default: how an ad was found says nothing of its worth, and a non-zero weight ranks ads the exhaustive reference of funnel eval would pick below others'),
        source_targeting: z.number().default(0.0),
        source_popularity: z.number().default(0.0),
      })
      .strict()
      .default({
        bias: -1.0,
        ann_similarity: 2.0,
        ctr_prior_logit: 1.0,
        popularity_rate: 5.0,
        quality: 0.5,
        source_ann: 0.0,
        source_targeting: 0.0,
        source_popularity: 0.0,
      })
      .describe('pCTR = sigmoid(bias + sum of weight * feature)'),
  })
  .strict();

/** Diversifier: advertiser and category caps, then MMR. */
export const diversifierStageSchema = z
  .object({
    ...stageBase,
    max_per_advertiser: int(1, 100_000).default(3).describe('at most this many ads of one advertiser'),
    max_per_category: int(1, 100_000).default(10).describe('at most this many ads of one category'),
    mmr_lambda: z.number().min(0).max(1).default(0.7).describe('MMR trade-off: 1 = score only, 0 = diversity only'),
    mmr_depth: int(0, 100_000).default(150).describe('top candidates MMR re-orders (0 = no MMR)'),
  })
  .strict();

/** The stages of one pipeline. */
export const stagesSchema = z
  .object({
    Eligibility: eligibilityStageSchema.default(() => eligibilityStageSchema.parse({})),
    Ann: annStageSchema.default(() => annStageSchema.parse({})),
    Targeting: targetingStageSchema.default(() => targetingStageSchema.parse({})),
    Popularity: popularityStageSchema.default(() => popularityStageSchema.parse({})),
    Filters: filtersStageSchema.default(() => filtersStageSchema.parse({})),
    EarlyRanker: earlyRankerStageSchema.default(() => earlyRankerStageSchema.parse({})),
    Diversifier: diversifierStageSchema.default(() => diversifierStageSchema.parse({})),
  })
  .strict();

/** One pipeline, with its stages' knobs filled in. */
export const pipelineSchema = z
  .object({
    description: z.string().default(''),
    stages: stagesSchema.default(() => stagesSchema.parse({})),
  })
  .strict();

/**
 * Admission of Retrieve calls under load: an adaptive concurrency limit (AIMD on the latency of
 * answered calls against their no-load latency) under the hard `max_in_flight`, a short LIFO wait
 * for a slot, and a deadline check. Every refusal is RESOURCE_EXHAUSTED, decided before the
 * request is decoded.
 */
export const admissionSchema = z
  .object({
    adaptive: z
      .boolean()
      .default(true)
      .describe('adapt the concurrency limit between min_limit and max_in_flight to the observed latency (false: the limit is max_in_flight)'),
    min_limit: int(1, 1_000_000).default(4).describe('lowest the adaptive limit goes (calls in flight always allowed, up to max_in_flight)'),
    initial_limit: int(1, 1_000_000)
      .default(8)
      .describe('adaptive limit at start; it does not grow past this until the no-load latency has been measured (clamped to [min_limit, max_in_flight])'),
    latency_tolerance: z
      .number()
      .min(1.1)
      .max(100)
      .default(3)
      .describe(
        'the limit backs off (x0.9) after a window whose median latency is over this multiple of the no-load median (of calls that ran alone), and grows by 1 after a window that reached it with the latency under',
      ),
    window_ms: int(10, 60_000).default(100).describe('length of a latency window (at least 10 answered calls each) (milliseconds)'),
    queue_timeout_ms: int(0, 60_000)
      .default(20)
      .describe(
        'longest a call that finds the adaptive limit reached waits for a slot (newest first) before RESOURCE_EXHAUSTED, and never past its deadline less the current median latency; at most max_in_flight calls wait; 0 = no waiting (milliseconds)',
      ),
    deadline_check: z
      .boolean()
      .default(true)
      .describe('while other calls are in flight, refuse at once a call whose deadline leaves less than the median latency of the last window (it could only end degraded or DEADLINE_EXCEEDED)'),
  })
  .strict();

/** Server-wide limits, enforced before any work is done. */
export const limitsSchema = z
  .object({
    max_message_bytes: int(1024, 256 << 20).default(4 << 20).describe('largest gRPC message received'),
    max_in_flight: int(1, 1_000_000)
      .default(128)
      .describe('Retrieve calls in flight, the ceiling of the adaptive limit (limits.admission); past it RESOURCE_EXHAUSTED at once'),
    admission: admissionSchema.default(() => admissionSchema.parse({})).describe('adaptive concurrency limit, wait for a slot and deadline check of Retrieve'),
    max_concurrent_streams: int(0, 1_000_000)
      .default(100)
      .describe('HTTP/2 streams one client connection may have open at once (grpc.max_concurrent_streams; 0 = no limit); a server option: applies after a restart'),
    shed_event_loop_lag_ms: int(0, 60_000)
      .default(40)
      .describe('shed new Retrieve calls (RESOURCE_EXHAUSTED) while the event loop runs this late: calls queued before the handler are invisible to max_in_flight (0 = off)'),
    default_num_results: int(1, 100_000).default(50).describe('num_results when the request sends 0'),
    max_num_results: int(1, 100_000).default(500).describe('largest num_results accepted'),
    max_attributes: int(0, 100_000).default(64).describe('attribute names per request or event'),
    max_attribute_values: int(0, 1_000_000).default(256).describe('values per attribute'),
    max_string_bytes: int(1, 1 << 20).default(256).describe('length of any id, attribute name or value (UTF-16 units)'),
    max_exclusions: int(0, 1_000_000).default(10_000).describe('entries per exclude/blocked list'),
    max_batch: int(1, 1_000_000).default(10_000).describe('ads, ids, spend entries or events per Admin call'),
    max_explain_ads: int(1, 100_000).default(100).describe('ad_ids one Explain call may ask about'),
    default_deadline_ms: int(1, 600_000).default(1000).describe('deadline of a Retrieve that sends none'),
    on_deadline: z
      .enum(['degraded', 'error'])
      .default('degraded')
      .describe('when the deadline runs out: answer with what is ready (degraded) or DEADLINE_EXCEEDED'),
    on_min_seq: z
      .enum(['unavailable', 'degraded'])
      .default('unavailable')
      .describe("when a Retrieve's min_seq is not applied here by its deadline: UNAVAILABLE, or answer from the data there is with `Consistency` in degraded_stages"),
  })
  .strict();

/** Popularity state: decay and segments (shared by every pipeline). */
export const popularitySchema = z
  .object({
    half_life_s: z.number().positive().max(365 * 86400).default(3600).describe('half-life of engagement, seconds'),
    segment_attributes: z.array(z.string().min(1)).max(16).default(['country']).describe('event attributes that define segments'),
    click_weight: z.number().min(0).default(1).describe('weight of a click in the popularity score'),
    impression_weight: z.number().min(0).default(0.02).describe('weight of an impression in the popularity score'),
    prior_impressions: z.number().min(0).default(100).describe('smoothing of the popularity rate: clicks / (impressions + this)'),
  })
  .strict();

/** One experiment arm: users whose bucket is in [from, to] are served by `pipeline`. */
export const armSchema = z
  .object({
    name: z.string().min(1).max(64).regex(/^[A-Za-z0-9_.-]+$/, 'must be letters, digits, _ . -').describe('arm name: a span attribute and a metric label'),
    pipeline: z.string().min(1).describe('pipeline serving this arm'),
    buckets: z.tuple([int(0, 99_999), int(0, 99_999)]).describe('[from, to] bucket range, inclusive'),
  })
  .strict();

/** Traffic split: bucket = FNV-1a 32 of UTF-8 `salt:user_id`, modulo `buckets`; a request naming a pipeline skips it. */
export const experimentsSchema = z
  .object({
    salt: z.string().default('').describe('changes every user’s bucket when changed (start a new experiment)'),
    buckets: int(1, 100_000).default(100).describe('number of buckets'),
    arms: z.array(armSchema).default([]).describe('arms by bucket range; users in no arm get default_pipeline'),
  })
  .strict();

/** Background checkpoints of the ANN index, so a restart (even after kill -9) replays a bounded change log. */
export const checkpointSchema = z
  .object({
    changes: int(1, 100_000_000).default(10_000).describe('checkpoint once this many ads changed in the ANN index since the last one'),
    interval_s: int(1, 86_400).default(300).describe('checkpoint when changes have waited this long, however few'),
  })
  .strict();

/** Trace sampling knobs (the exporter itself is set up by OTEL_* variables at start). */
export const tracingSchema = z
  .object({
    sample_ratio: z
      .number()
      .min(0)
      .max(1)
      .nullable()
      .default(null)
      .describe(
        'share of new traces sampled, in place of OTEL_TRACES_SAMPLER: ParentBased(TraceIdRatio(sample_ratio)), so a caller\'s sampled or unsampled traceparent is still followed; null = OTEL_TRACES_SAMPLER decides. Needs an exporter (OTEL_TRACES_EXPORTER)',
      ),
  })
  .strict();

/** Feature logging (`funnel serve --feature-log DIR`): which Retrieves and which candidates have their EarlyRanker features logged. */
export const featureLogSchema = z
  .object({
    sample: z.number().min(0).max(1).default(0.01).describe('share of Retrieves whose EarlyRanker features are logged (only with --feature-log DIR)'),
    cut_sample: z
      .number()
      .min(0)
      .max(1)
      .default(0.1)
      .describe('share of the candidates the EarlyRanker cut (below keep) logged with a sampled Retrieve; every candidate it kept is logged'),
  })
  .strict();

/** Shard snapshots in a JetStream object store (a replica's bootstrap and upkeep). */
export const snapshotSchema = z
  .object({
    bucket: z.string().min(1).max(64).regex(/^[A-Za-z0-9_-]+$/, 'must be letters, digits, _ -').default('FUNNEL_SNAPSHOTS').describe('JetStream object store holding each shard\'s newest snapshot (created with stream_replicas copies; read at start)'),
    interval_s: int(0, 7 * 86_400).default(900).describe('a serving replica checks this often whether to upload a snapshot of its shard (0 = never upload)'),
    min_messages: int(1, 1_000_000_000).default(10_000).describe("it uploads one when what it applied is at least this many stream sequence numbers past the newest snapshot's (every shard's messages count: the stream is shared)"),
    restore: z.boolean().default(true).describe('an empty data directory is filled from the newest snapshot (then the stream after it) instead of the whole stream'),
  })
  .strict();

/**
 * Replication (`funnel serve --nats URL --shard I/N`, `funnel ingest --nats`): the JetStream
 * stream the writes go through and how far behind a replica may fall before it stops serving.
 * `stream`, `subject_prefix` and `stream_replicas` are read at start (the stream is created
 * with them when missing); the rest reload.
 */
export const clusterSchema = z
  .object({
    stream: z.string().min(1).max(64).regex(/^[A-Za-z0-9_-]+$/, 'must be letters, digits, _ -').default('FUNNEL').describe('JetStream stream holding every shard\'s writes (read at start)'),
    subject_prefix: z
      .string()
      .min(1)
      .max(128)
      .regex(/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/, 'must be dot-separated tokens of letters, digits, _ -')
      .default('funnel.writes')
      .describe('shard I of N publishes to and applies "<subject_prefix>.<N>.<I>" (read at start)'),
    stream_replicas: int(1, 5).default(1).describe('JetStream replicas (R) of the stream when this process creates it; 3 in production (read at start)'),
    publish_timeout_ms: int(10, 60_000).default(5000).describe('an Admin write the stream has not acknowledged by then fails UNAVAILABLE (it may still be applied)'),
    apply_timeout_ms: int(10, 600_000).default(10_000).describe('an Admin write acknowledged by the stream but not applied here by then fails UNAVAILABLE (it stays in the stream and is applied later)'),
    max_lag_seconds: z.number().min(0).max(86_400).default(30).describe('a replica whose oldest unapplied write is older than this reports NOT_SERVING (0 = never)'),
    max_lag_messages: int(0, 1_000_000_000).default(100_000).describe('a replica this many writes behind reports NOT_SERVING (0 = never)'),
    snapshot: snapshotSchema.default(() => snapshotSchema.parse({})),
  })
  .strict();


/** `funnel root`: fan-out to the shards' replicas. All reload. */
export const rootSchema = z
  .object({
    hedge_after_ms: int(0, 10_000).default(20).describe('ask a second replica of a shard when the first has not answered by then (0 = no hedging)'),
    overfetch: z.number().min(1).max(10).default(2).describe('each shard is asked for ceil(num_results x overfetch) candidates (at most limits.max_num_results) so global caps still fill N'),
    down_after_failures: int(1, 100).default(2).describe('consecutive failed calls after which a replica is taken out of rotation'),
    retry_down_after_ms: int(10, 600_000).default(1000).describe('a replica out of rotation is tried again after this long'),
  })
  .strict();

/** The whole configuration file. */
export const configSchema = z
  .object({
    version: z.string().default('builtin').describe('a label for this config; reported in metrics and logs'),
    limits: limitsSchema.default(() => limitsSchema.parse({})),
    popularity: popularitySchema.default(() => popularitySchema.parse({})),
    tracing: tracingSchema.default(() => tracingSchema.parse({})),
    checkpoint: checkpointSchema.default(() => checkpointSchema.parse({})),
    feature_log: featureLogSchema.default(() => featureLogSchema.parse({})),
    cluster: clusterSchema.default(() => clusterSchema.parse({})),
    root: rootSchema.default(() => rootSchema.parse({})),
    default_pipeline: z.string().min(1).default('default'),
    experiments: experimentsSchema.default(() => experimentsSchema.parse({})),
    pipelines: z.record(z.string().min(1), pipelineSchema).default(() => ({ default: pipelineSchema.parse({}) })),
  })
  .strict()
  .superRefine((c, ctx) => {
    if (!Object.prototype.hasOwnProperty.call(c.pipelines, c.default_pipeline)) {
      ctx.addIssue({ code: 'custom', path: ['default_pipeline'], message: `names no pipeline (have: ${Object.keys(c.pipelines).join(', ')})` });
    }
    const taken: { name: string; from: number; to: number }[] = [];
    c.experiments.arms.forEach((arm, i) => {
      const path = ['experiments', 'arms', i];
      if (!Object.prototype.hasOwnProperty.call(c.pipelines, arm.pipeline)) {
        ctx.addIssue({ code: 'custom', path: [...path, 'pipeline'], message: `names no pipeline (have: ${Object.keys(c.pipelines).join(', ')})` });
      }
      const [from, to] = arm.buckets;
      if (from > to || to >= c.experiments.buckets) {
        ctx.addIssue({ code: 'custom', path: [...path, 'buckets'], message: `must be [from, to] with from <= to < experiments.buckets (${c.experiments.buckets})` });
      }
      for (const t of taken) {
        if (t.name === arm.name) ctx.addIssue({ code: 'custom', path: [...path, 'name'], message: `arm "${arm.name}" appears twice` });
        if (from <= t.to && t.from <= to) ctx.addIssue({ code: 'custom', path: [...path, 'buckets'], message: `overlaps arm "${t.name}"` });
      }
      taken.push({ name: arm.name, from, to });
    });
    if (c.limits.default_num_results > c.limits.max_num_results) {
      ctx.addIssue({ code: 'custom', path: ['limits', 'default_num_results'], message: 'must be <= limits.max_num_results' });
    }
  });

/** A validated configuration with every default filled in. */
export type Config = z.infer<typeof configSchema>;
export type PipelineConfig = z.infer<typeof pipelineSchema>;
export type ExperimentsConfig = z.infer<typeof experimentsSchema>;
export type StagesConfig = z.infer<typeof stagesSchema>;
export type LimitsConfig = z.infer<typeof limitsSchema>;
export type AdmissionConfig = z.infer<typeof admissionSchema>;
export type PopularityConfig = z.infer<typeof popularitySchema>;
export type TracingConfig = z.infer<typeof tracingSchema>;
export type CheckpointConfig = z.infer<typeof checkpointSchema>;
export type FeatureLogConfig = z.infer<typeof featureLogSchema>;
export type ClusterConfig = z.infer<typeof clusterSchema>;
export type RootConfig = z.infer<typeof rootSchema>;
export type AnnStageConfig = z.infer<typeof annStageSchema>;
export type TargetingStageConfig = z.infer<typeof targetingStageSchema>;
export type PopularityStageConfig = z.infer<typeof popularityStageSchema>;
export type FiltersStageConfig = z.infer<typeof filtersStageSchema>;
export type EarlyRankerStageConfig = z.infer<typeof earlyRankerStageSchema>;
export type RankerModelConfig = EarlyRankerStageConfig['model'];
export type OnnxModelConfig = z.infer<typeof onnxModelSchema>;
export type ShadowModelConfig = NonNullable<EarlyRankerStageConfig['shadow_model']>;
export type DiversifierStageConfig = z.infer<typeof diversifierStageSchema>;
export type StageName = keyof StagesConfig;
