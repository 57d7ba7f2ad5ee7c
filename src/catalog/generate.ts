/**
 * Deterministic generator of catalog rows (CONTRACT section 1) and request attributes, with the
 * skew of a real ads catalog: Zipf-sized advertisers, IAB-style categories, log-normal bids,
 * country/platform targeting skewed toward large markets, thousands of Zipf-popular communities,
 * a few exclusions and multi-conjunction ads. Two embedding/bid shapes: 'mixture' (a loose
 * Gaussian mixture tied to categories, log-normal bids) and 'clustered' (many tight clusters of
 * Zipf-distributed size, Pareto bids), where both the embedding and the bid decide the ranking.
 * Same options and seed, same rows, on every platform (a seeded sfc32 generator; no
 * Math.random). Rows are yielded one at a time, so a million never sit in memory at once.
 */
import type { z } from 'zod';
import type { RequestAttributes } from '../native/index';
import type { catalogRowSchema, Conjunction, Predicate } from '../store/catalog-schema';

/** A catalog row as written in a catalog file (optional fields absent rather than defaulted). */
export type CatalogFileRow = z.input<typeof catalogRowSchema>;

// ---------------------------------------------------------------------------------------------
// Seeded randomness

/** splitmix32 step: a well-mixed 32-bit value of `x`. */
function mix32(x: number): number {
  x = (x + 0x9e3779b9) | 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

/** Seeded pseudo-random numbers (sfc32, period about 2^128); deterministic across platforms. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d = 1;
  private spare: number | undefined;

  /** `seed` and optional `stream` (e.g. an advertiser number) select independent sequences. */
  constructor(seed: number, stream = 0) {
    this.a = mix32(seed >>> 0);
    this.b = mix32(this.a ^ (stream >>> 0));
    this.c = mix32(this.b ^ 0x5bd1e995);
    for (let i = 0; i < 12; i++) this.u32();
  }

  /** Uniform 32-bit unsigned integer. */
  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    return this.u32() / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  /** Standard normal (Box-Muller). */
  normal(): number {
    if (this.spare !== undefined) {
      const s = this.spare;
      this.spare = undefined;
      return s;
    }
    let u = this.next();
    while (u === 0) u = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    const theta = 2 * Math.PI * this.next();
    this.spare = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /** exp(N(ln median, sigma^2)). */
  logNormal(median: number, sigma: number): number {
    return median * Math.exp(sigma * this.normal());
  }

  /** One element of a non-empty list. */
  pick<T>(list: readonly T[]): T {
    return list[this.int(list.length)];
  }
}

/** Zipf(s) sampler over ranks 0..n-1 (rank 0 most frequent). */
export class Zipf {
  private readonly cdf: Float64Array;

  constructor(n: number, s: number) {
    this.cdf = new Float64Array(n);
    let sum = 0;
    for (let k = 0; k < n; k++) {
      sum += 1 / Math.pow(k + 1, s);
      this.cdf[k] = sum;
    }
    for (let k = 0; k < n; k++) this.cdf[k] /= sum;
  }

  /** A rank in [0, n). */
  sample(rng: Rng): number {
    const u = rng.next();
    let lo = 0;
    let hi = this.cdf.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.cdf[mid] <= u) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** `k` distinct ranks (k <= n), drawn by rejection. */
  distinct(rng: Rng, k: number): number[] {
    const out: number[] = [];
    for (let tries = 0; out.length < k && tries < k * 50; tries++) {
      const r = this.sample(rng);
      if (!out.includes(r)) out.push(r);
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// Vocabularies (fixed: the same on every run and for every seed)

/** Country codes, most targeted first (the generator's Zipf order). */
export const COUNTRIES: readonly string[] = [
  'US', 'GB', 'CA', 'DE', 'IN', 'BR', 'FR', 'AU', 'JP', 'MX', 'ES', 'IT', 'NL', 'SE', 'PL', 'KR',
  'ID', 'PH', 'TR', 'AR', 'ZA', 'NG', 'IE', 'NZ', 'SG', 'MY', 'TH', 'VN', 'CO', 'CL', 'PE', 'PT',
  'BE', 'AT', 'CH', 'DK', 'NO', 'FI', 'IL', 'AE', 'SA', 'EG', 'PK', 'BD', 'UA', 'RO', 'CZ', 'GR',
];

/** Platforms with their share of requests. */
export const PLATFORMS: readonly string[] = ['ios', 'android', 'web'];
const PLATFORM_SHARE = [0.38, 0.42, 0.2];

/** IAB-style category slugs, most common first. */
export const CATEGORIES: readonly string[] = [
  'gaming', 'technology', 'shopping', 'entertainment', 'finance', 'food-drink', 'travel', 'automotive',
  'health-fitness', 'style-fashion', 'education', 'sports', 'home-garden', 'music', 'movies-tv',
  'personal-finance', 'business', 'careers', 'real-estate', 'family-parenting', 'pets', 'science',
  'news', 'beauty', 'books-literature', 'hobbies-interests', 'arts-culture', 'law-government',
  'religion-spirituality', 'insurance',
];

/** Interest slugs a request or an ad may carry, most common first. */
export const INTERESTS: readonly string[] = [
  'video-games', 'esports', 'pc-hardware', 'smartphones', 'programming', 'ai', 'crypto', 'investing',
  'stocks', 'budgeting', 'cooking', 'baking', 'coffee', 'wine', 'fitness', 'running', 'cycling',
  'yoga', 'hiking', 'camping', 'travel-deals', 'backpacking', 'cars', 'electric-vehicles',
  'motorcycles', 'football', 'basketball', 'baseball', 'soccer', 'tennis', 'golf', 'fashion',
  'sneakers', 'skincare', 'makeup', 'parenting', 'dogs', 'cats', 'gardening', 'diy', 'woodworking',
  'photography', 'film', 'anime', 'comics', 'books', 'podcasts', 'music-production', 'concerts',
  'hip-hop', 'rock', 'classical', 'home-decor', 'real-estate', 'startups', 'marketing', 'design',
  'science', 'space', 'history', 'politics', 'education', 'languages', 'board-games', 'tabletop-rpg',
];

/** Communities that ads exclude (`none_of`) and a few requests come from. */
export const SENSITIVE_COMMUNITIES: readonly string[] = ['r/nsfw', 'r/gore', 'r/gambling', 'r/drugs'];

const KNOWN_COMMUNITIES = [
  'r/AskReddit', 'r/gaming', 'r/worldnews', 'r/funny', 'r/pics', 'r/todayilearned', 'r/science',
  'r/movies', 'r/technology', 'r/music', 'r/nba', 'r/soccer', 'r/nfl', 'r/personalfinance',
  'r/fitness', 'r/food', 'r/travel', 'r/pcgaming', 'r/buildapc', 'r/programming', 'r/dataisbeautiful',
  'r/books', 'r/space', 'r/cars', 'r/sneakers', 'r/MakeupAddiction', 'r/investing', 'r/CryptoCurrency',
  'r/Cooking', 'r/aww', 'r/España', 'r/de', 'r/france', 'r/brasil', 'r/india', 'r/japan', 'r/日本',
  'r/Zürich', 'r/Москва', 'r/한국', 'r/مصر',
];

function makeCommunities(n: number): string[] {
  const syllables = ['ka', 'lo', 'mi', 'ne', 'ru', 'ta', 'vi', 'zo', 'bel', 'cor', 'dan', 'fin', 'gar', 'hul',
    'jen', 'kim', 'lar', 'mor', 'nix', 'pol', 'quin', 'ros', 'sul', 'tor', 'ul', 'ven', 'wes', 'yar'];
  const rng = new Rng(0x636f6d6d); // fixed: the vocabulary does not depend on the catalog seed
  const out = [...KNOWN_COMMUNITIES, ...SENSITIVE_COMMUNITIES];
  const seen = new Set(out);
  while (out.length < n) {
    const parts = 2 + rng.int(3);
    let name = 'r/';
    for (let i = 0; i < parts; i++) name += rng.pick(syllables);
    if (rng.chance(0.3)) name += String(rng.int(100));
    if (!seen.has(name)) {
      seen.add(name);
      out.push(name);
    }
  }
  return out;
}

/** 5,000 community names (`r/<name>`, a few in non-Latin scripts), most popular first; the sensitive ones are included. */
export const COMMUNITIES: readonly string[] = makeCommunities(5000);

/** Languages requests carry; no generated ad targets them (an attribute the index does not know). */
export const LANGUAGES: readonly string[] = ['en', 'es', 'de', 'fr', 'pt', 'ja', 'hi'];

const countryZipf = new Zipf(COUNTRIES.length, 1.3);
const categoryZipf = new Zipf(CATEGORIES.length, 0.9);
const interestZipf = new Zipf(INTERESTS.length, 0.9);
const communityZipf = new Zipf(COMMUNITIES.length, 1.0);
let advertiserRanks: Zipf | undefined;
const advertiserZipf = (): Zipf => (advertiserRanks ??= new Zipf(100_000, 0.95));

function weighted(rng: Rng, shares: readonly number[]): number {
  let u = rng.next();
  for (let i = 0; i < shares.length - 1; i++) {
    u -= shares[i];
    if (u < 0) return i;
  }
  return shares.length - 1;
}

// ---------------------------------------------------------------------------------------------
// Embedding shapes

/** How embeddings and bids are distributed: 'mixture' (the default) or 'clustered'. */
export type CatalogShape = 'mixture' | 'clustered';

/** What fixes the embedding centres of a catalog: the options of {@link catalogCentres}. */
export interface CentreOptions {
  /** Embedding length (1..4096). */
  dim: number;
  /** Default 1. */
  seed?: number;
  /** Default 'mixture'. */
  shape?: CatalogShape;
  /** Number of centres (an integer; values below 1 count as 1); default 64 for 'mixture', 512 for 'clustered'. */
  clusters?: number;
}

/** Spread of a 'mixture' ad around its centre, per coordinate. */
const MIXTURE_AD_SIGMA = 0.35;
/** Spread of a 'mixture' user around its centre, per coordinate. */
const MIXTURE_USER_SIGMA = 0.5;
/** Spread of a 'clustered' ad or user around its centre, per coordinate: tight, so a popular cluster is thousands of near-ties. */
const CLUSTERED_SIGMA = 0.12;
/** Zipf exponent of the cluster sizes of 'clustered' (the largest of 512 holds about a fifth of the ads). */
const CLUSTERED_ZIPF = 1.1;

function checkDim(dim: number): void {
  if (!Number.isInteger(dim) || dim < 1 || dim > 4096) throw new Error(`dim must be an integer in 1..4096, got ${dim}`);
}

function resolveCentres(options: CentreOptions): { dim: number; seed: number; shape: CatalogShape; clusters: number } {
  const { dim } = options;
  checkDim(dim);
  const shape = options.shape ?? 'mixture';
  if (shape !== 'mixture' && shape !== 'clustered') throw new Error(`shape must be 'mixture' or 'clustered', got ${String(shape)}`);
  const clusters = options.clusters ?? (shape === 'clustered' ? 512 : 64);
  if (!Number.isInteger(clusters)) throw new Error(`clusters must be an integer, got ${clusters}`);
  return { dim, seed: options.seed ?? 1, shape, clusters: Math.max(1, clusters) };
}

/**
 * The embedding centres of a catalog, `clusters * dim` values row-major, each N(0, 1) per
 * coordinate: the ones {@link generateCatalog} and {@link generateUserEmbeddings} place ads and
 * users around for the same options. In 'clustered', centre k is Zipf rank k (centre 0 the largest).
 */
export function catalogCentres(options: CentreOptions): Float64Array {
  const { dim, seed, shape, clusters } = resolveCentres(options);
  const centres = new Float64Array(clusters * dim);
  // The streams differ so that the two shapes' centres are unrelated; 0xc1 is what 'mixture' always used.
  const cr = new Rng(seed, shape === 'mixture' ? 0xc1 : 0xc2);
  for (let i = 0; i < centres.length; i++) centres[i] = cr.normal();
  return centres;
}

/** Pareto(alpha 1.3, scale 200,000) micros capped at 1e9: median about 341,000, a few ads bid 100x that. */
function paretoBid(rng: Rng): number {
  return Math.min(1e9, Math.round(200_000 * Math.pow(1 - rng.next(), -1 / 1.3)));
}

// ---------------------------------------------------------------------------------------------
// Catalog rows

/** Options of {@link generateCatalog}. */
export interface CatalogOptions {
  /** Rows to yield. */
  count: number;
  /** Embedding length (1..4096). */
  dim: number;
  /** Default 1. */
  seed?: number;
  /**
   * 'mixture' (default): a Gaussian mixture (sigma 0.35) where each category favours a few
   * centres, log-normal bids. 'clustered': ads around Zipf(1.1)-chosen centres with sigma 0.12,
   * Pareto(1.3) bids, a wider ctr_prior spread; targeting, status, budgets, flights and
   * advertisers as in 'mixture'.
   */
  shape?: CatalogShape;
  /** Embedding centres (default 64 for 'mixture', 512 for 'clustered'). */
  clusters?: number;
  /** Flight windows are placed around this instant (default 2025-06-01T00:00:00Z). */
  now?: Date;
}

interface Advertiser {
  category: number;
  campaigns: number;
  home: string[];
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f || 0; // never -0, which JSON writes as 0
}

function rfc3339(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function anyOf(values: string[]): Predicate {
  return { any_of: values };
}

/** One conjunction of the usual shape: countries and platforms, sometimes communities, interests and exclusions. */
function conjunction(rng: Rng, adv: Advertiser): Conjunction {
  const c: Record<string, Predicate> = {};
  if (rng.chance(0.88)) {
    const k = rng.chance(0.6) ? 1 : rng.chance(0.6) ? 2 : 3;
    const picks = rng.chance(0.5) ? adv.home.slice(0, k) : countryZipf.distinct(rng, k).map((i) => COUNTRIES[i]);
    c.country = anyOf(picks);
  } else if (rng.chance(0.15)) {
    c.country = { none_of: countryZipf.distinct(rng, 1 + rng.int(2)).map((i) => COUNTRIES[i]) };
  }
  if (rng.chance(0.8)) {
    const first = weighted(rng, PLATFORM_SHARE);
    const platforms = [PLATFORMS[first]];
    if (rng.chance(0.3)) platforms.push(PLATFORMS[(first + 1 + rng.int(2)) % 3]);
    c.platform = anyOf(platforms);
  }
  const community: Predicate = {};
  if (rng.chance(0.15)) community.any_of = communityZipf.distinct(rng, 1 + rng.int(5)).map((i) => COMMUNITIES[i]);
  if (rng.chance(0.05)) {
    community.none_of = rng.chance(0.7) ? ['r/nsfw'] : SENSITIVE_COMMUNITIES.slice(0, 1 + rng.int(SENSITIVE_COMMUNITIES.length));
  }
  if (community.any_of !== undefined || community.none_of !== undefined) c.community = community;
  if (rng.chance(0.12)) c.interests = anyOf(interestZipf.distinct(rng, 1 + rng.int(3)).map((i) => INTERESTS[i]));
  return c;
}

/** A further conjunction of a multi-conjunction ad: a different audience, an exclusion-only rule, or (rarely) `{}`. */
function extraConjunction(rng: Rng, adv: Advertiser): Conjunction {
  const r = rng.next();
  if (r < 0.05) return {};
  if (r < 0.25) return { country: { none_of: countryZipf.distinct(rng, 1 + rng.int(3)).map((i) => COUNTRIES[i]) } };
  if (r < 0.55) {
    return {
      community: anyOf(communityZipf.distinct(rng, 1 + rng.int(4)).map((i) => COMMUNITIES[i])),
      platform: anyOf([PLATFORMS[weighted(rng, PLATFORM_SHARE)]]),
    };
  }
  return conjunction(rng, adv);
}

/** An ad's targeting: ~7% absent, ~3% with 2-3 conjunctions, otherwise one. */
function targeting(rng: Rng, adv: Advertiser): Conjunction[] | undefined {
  const r = rng.next();
  if (r < 0.07) return undefined;
  const list = [conjunction(rng, adv)];
  if (r > 0.97) {
    const extra = 1 + rng.int(2);
    for (let i = 0; i < extra; i++) list.push(extraConjunction(rng, adv));
  }
  return list;
}

/**
 * Yields `count` catalog rows (`ad-0` .. `ad-<count-1>`) in CONTRACT section 1 shape. Same
 * options, same rows; the first rows do not depend on `count`. Advertisers are Zipf-sized,
 * each with a home category, home countries and a few campaigns.
 */
export function* generateCatalog(options: CatalogOptions): Generator<CatalogFileRow> {
  const { count } = options;
  if (!Number.isInteger(count) || count < 0) throw new Error(`count must be an integer >= 0, got ${count}`);
  const { dim, seed, shape, clusters } = resolveCentres(options);
  const clustered = shape === 'clustered';
  const now = (options.now ?? new Date('2025-06-01T00:00:00Z')).getTime();
  const rng = new Rng(seed);

  // Advertisers are drawn from a fixed population of 100,000 ranked by size (Zipf 0.95): the
  // largest holds a few percent of a million-ad catalog, most hold one or two ads, and the first
  // rows of a long catalog are the rows of a short one with the same seed.
  const advertisers = new Map<number, Advertiser>();
  const advertiser = (k: number): Advertiser => {
    let a = advertisers.get(k);
    if (a === undefined) {
      const ar = new Rng(seed, k + 1);
      a = {
        category: categoryZipf.sample(ar),
        campaigns: 1 + Math.floor(Math.log2(1 + 2000 / (k + 1))) + ar.int(2),
        home: countryZipf.distinct(ar, 3).map((i) => COUNTRIES[i]),
      };
      advertisers.set(k, a);
    }
    return a;
  };

  const centres = catalogCentres({ dim, seed, shape, clusters });
  const perCategory = Math.max(1, Math.floor(clusters / 8));
  const clusterZipf = clustered ? new Zipf(clusters, CLUSTERED_ZIPF) : undefined;
  const sigma = clustered ? CLUSTERED_SIGMA : MIXTURE_AD_SIGMA;
  const ctrSigma = clustered ? 1.0 : 0.7;

  for (let i = 0; i < count; i++) {
    const k = advertiserZipf().sample(rng);
    const adv = advertiser(k);
    const categoryIndex = rng.chance(0.8) ? adv.category : categoryZipf.sample(rng);
    const campaign = rng.int(adv.campaigns);
    const status = rng.chance(0.07) ? 'paused' : rng.chance(0.3) ? 'active' : undefined;
    const bid = clustered ? paretoBid(rng) : Math.round(rng.logNormal(800_000, 0.9));
    const budget = rng.chance(0.85) ? Math.round(rng.logNormal(150_000_000, 1.2)) : undefined;
    const quality = rng.chance(0.8) ? round(Math.min(1, Math.max(0, 0.6 + 0.15 * rng.normal())), 3) : undefined;
    const ctr = rng.chance(0.7) ? round(Math.min(0.5, Math.max(0.0001, rng.logNormal(0.01, ctrSigma))), 5) : undefined;
    // The 'mixture' branches make exactly the draws they always made, in the same order, so its rows are unchanged (tests pin them).
    const cluster = clusterZipf
      ? clusterZipf.sample(rng)
      : (categoryIndex * perCategory + rng.int(perCategory) + (rng.chance(0.1) ? rng.int(clusters) : 0)) % clusters;
    const embedding = new Array<number>(dim);
    for (let j = 0; j < dim; j++) embedding[j] = round(centres[cluster * dim + j] + sigma * rng.normal(), 4);
    const t = targeting(rng, adv);

    // Keys in the contract's order; optional fields only when present.
    const row: CatalogFileRow = {
      ad_id: `ad-${i}`,
      advertiser_id: `adv-${k}`,
      campaign_id: `cmp-${k}-${campaign}`,
      category: CATEGORIES[categoryIndex],
      ...(status !== undefined && { status }),
      bid_micros: bid,
      ...(budget !== undefined && { daily_budget_micros: budget }),
      ...(quality !== undefined && { quality }),
      ...(ctr !== undefined && { ctr_prior: ctr }),
      embedding,
      ...(t !== undefined && { targeting: t }),
    };
    if (rng.chance(0.15)) {
      const day = 86_400_000;
      const start = now - rng.int(30) * day - rng.int(day);
      row.start_time = rfc3339(start);
      if (rng.chance(0.8)) row.end_time = rfc3339(start + (1 + rng.int(60)) * day);
    }
    yield row;
  }
}

// ---------------------------------------------------------------------------------------------
// Requests

/**
 * `n` user embeddings (seeded) around the centres of the catalog with the same `dim`, `seed`,
 * `shape` and `clusters` ({@link catalogCentres}): 'mixture', a uniformly chosen centre plus
 * N(0, 0.5^2) per coordinate; 'clustered', a Zipf(1.1)-chosen centre (popular clusters get more
 * users) plus N(0, 0.12^2), so most users sit among thousands of near-tied ads.
 */
export function generateUserEmbeddings(n: number, options: CentreOptions): Float32Array[] {
  if (!Number.isInteger(n) || n < 0) throw new Error(`n must be an integer >= 0, got ${n}`);
  const { dim, seed, shape, clusters } = resolveCentres(options);
  const centres = catalogCentres({ dim, seed, shape, clusters });
  const clusterZipf = shape === 'clustered' ? new Zipf(clusters, CLUSTERED_ZIPF) : undefined;
  const sigma = shape === 'clustered' ? CLUSTERED_SIGMA : MIXTURE_USER_SIGMA;
  const rng = new Rng(seed, 0x75736572);
  const out: Float32Array[] = [];
  for (let i = 0; i < n; i++) {
    const c = clusterZipf ? clusterZipf.sample(rng) : rng.int(clusters);
    const e = new Float32Array(dim);
    for (let j = 0; j < dim; j++) e[j] = centres[c * dim + j] + sigma * rng.normal();
    out.push(e);
  }
  return out;
}

/**
 * `n` request attribute maps (seeded): usually `country` and `platform`, often `community`,
 * `interests` and `language` (which no generated ad targets); sometimes a missing attribute,
 * a repeated value, an empty list, two countries, an unknown value or a sensitive community.
 */
export function generateRequests(n: number, seed = 2): RequestAttributes[] {
  const rng = new Rng(seed, 0x7265);
  const out: RequestAttributes[] = [];
  for (let i = 0; i < n; i++) {
    const r: Record<string, string[]> = {};
    if (rng.chance(0.96)) {
      const c = COUNTRIES[countryZipf.sample(rng)];
      const u = rng.next();
      if (u < 0.01) r.country = [c, c];
      else if (u < 0.02) r.country = [c, COUNTRIES[countryZipf.sample(rng)]];
      else if (u < 0.025) r.country = ['ZZ'];
      else r.country = [c];
    }
    if (rng.chance(0.97)) r.platform = [PLATFORMS[weighted(rng, PLATFORM_SHARE)]];
    if (rng.chance(0.55)) {
      const u = rng.next();
      if (u < 0.03) r.community = [rng.pick(SENSITIVE_COMMUNITIES)];
      else if (u < 0.04) r.community = [];
      else if (u < 0.06) r.community = communityZipf.distinct(rng, 2).map((j) => COMMUNITIES[j]);
      else r.community = [COMMUNITIES[communityZipf.sample(rng)]];
    }
    if (rng.chance(0.45)) {
      r.interests = rng.chance(0.05) ? [] : interestZipf.distinct(rng, 1 + rng.int(6)).map((j) => INTERESTS[j]);
    }
    if (rng.chance(0.3)) r.language = [rng.pick(LANGUAGES)];
    out.push(r);
  }
  return out;
}
