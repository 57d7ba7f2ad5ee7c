/**
 * Labelled examples for training the EarlyRanker (`funnel examples`): feature-log rows joined
 * with engagement events on (request_id, ad_id). A logged row with at least one impression is
 * an example, label 1 when it also has a click, else 0. Left out, and counted: rows never shown
 * (no impression: the client did not render them, or the ad was cut), rows with clicks but no
 * impression (a lost impression event: the label cannot be trusted either way), and rows whose
 * (request_id, ad_id) the log holds more than once (a request_id reused by a client: the events
 * cannot say which Retrieve showed the ad). An event delivered twice (same request_id, ad_id,
 * type and timestamp_ms > 0) counts once.
 *
 * The join takes three passes so that memory is bounded by the (sampled) log, never by the
 * event stream: addRow() for every row, addEvent() for every event, then example() for every row
 * again, in the same order.
 */
import type { FeatureLogRow } from '../telemetry/feature-log';

/** One engagement event as `funnel examples --events` reads it (a RecordEvents event with the Retrieve's request_id). */
export interface ExampleEvent {
  ad_id: string;
  type: 'IMPRESSION' | 'CLICK';
  /** Epoch ms; 0 when the line had none. */
  timestamp_ms: number;
  /** '' when the line had none. */
  request_id: string;
}

/** A labelled example: the feature-log row, its engagement, and the label. */
export interface Example extends FeatureLogRow {
  impressions: number;
  clicks: number;
  /** 1 when the shown ad was clicked, else 0. */
  label: 0 | 1;
}

/** What a join saw and left out. */
export interface JoinCounts {
  /** Feature-log rows read (good ones). */
  rows: number;
  /** Examples written, and how many have label 1. */
  examples: number;
  positives: number;
  /** Rows with no impression and no click: left out. */
  notShown: number;
  /** Rows with a click but no impression: left out. */
  clickedNotShown: number;
  /** Rows whose (request_id, ad_id) the log holds more than once: all of them left out. */
  duplicateRows: number;
  /** Events read (good ones). */
  events: number;
  /** Events counted on a logged row. */
  eventsJoined: number;
  /** Events without a request_id: cannot be joined. */
  eventsNoRequestId: number;
  /** Events whose request_id the log does not hold (an unsampled Retrieve, most of them). */
  eventsUnknownRequest: number;
  /** Events of a logged request for an ad the log does not hold for it (a cut ad not sampled, or never ranked). */
  eventsUnloggedAd: number;
  /** Events delivered more than once (same request_id, ad_id, type and timestamp_ms > 0): counted once. */
  duplicateEvents: number;
}

/** Reads one events-file line (a JSON value): proto field names or proto3 JSON's lowerCamelCase; `type` by name or enum number. */
export function readEventLine(obj: unknown): { event?: ExampleEvent; error?: string } {
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) return { error: 'a line must be a JSON object' };
  const o = obj as Record<string, unknown>;
  const adId = o.ad_id ?? o.adId;
  if (typeof adId !== 'string' || adId === '') return { error: 'ad_id: must be a non-empty string' };
  const t = o.type;
  const type = t === 'IMPRESSION' || t === 1 ? 'IMPRESSION' : t === 'CLICK' || t === 2 ? 'CLICK' : null;
  if (type === null) return { error: `type: must be IMPRESSION or CLICK, got ${JSON.stringify(t) ?? 'nothing'}` };
  const ts = o.timestamp_ms ?? o.timestampMs ?? 0;
  // proto3 JSON writes int64 as a string.
  const tsNum = typeof ts === 'string' && /^\d+$/.test(ts) ? Number(ts) : ts;
  if (typeof tsNum !== 'number' || !Number.isSafeInteger(tsNum) || tsNum < 0) return { error: 'timestamp_ms: must be epoch milliseconds (an integer >= 0)' };
  const rid = o.request_id ?? o.requestId ?? '';
  if (typeof rid !== 'string') return { error: 'request_id: must be a string' };
  return { event: { ad_id: adId, type, timestamp_ms: tsNum, request_id: rid } };
}

interface Slot {
  /** Rows of the log with this key. */
  rows: number;
  impressions: number;
  clicks: number;
  /** `type:timestamp_ms` of the events counted (timestamped ones only), to count a redelivery once. */
  seen?: Set<string>;
}

/** (request_id, ad_id) as one string, unambiguous for any two strings. */
function key(requestId: string, adId: string): string {
  return `${requestId.length}:${requestId}${adId}`;
}

/** The join of feature-log rows and events; see the file comment for the three passes. */
export class ExampleJoin {
  private readonly slots = new Map<string, Slot>();
  private readonly requests = new Set<string>();
  private readonly c: JoinCounts = {
    rows: 0,
    examples: 0,
    positives: 0,
    notShown: 0,
    clickedNotShown: 0,
    duplicateRows: 0,
    events: 0,
    eventsJoined: 0,
    eventsNoRequestId: 0,
    eventsUnknownRequest: 0,
    eventsUnloggedAd: 0,
    duplicateEvents: 0,
  };

  /** Pass 1: a row of the log. */
  addRow(row: FeatureLogRow): void {
    this.c.rows++;
    const k = key(row.request_id, row.ad_id);
    const s = this.slots.get(k);
    if (s) s.rows++;
    else this.slots.set(k, { rows: 1, impressions: 0, clicks: 0 });
    this.requests.add(row.request_id);
  }

  /** Pass 2: an event. */
  addEvent(e: ExampleEvent): void {
    const c = this.c;
    c.events++;
    if (e.request_id === '') {
      c.eventsNoRequestId++;
      return;
    }
    const s = this.slots.get(key(e.request_id, e.ad_id));
    if (!s) {
      if (this.requests.has(e.request_id)) c.eventsUnloggedAd++;
      else c.eventsUnknownRequest++;
      return;
    }
    if (e.timestamp_ms > 0) {
      const id = `${e.type}:${e.timestamp_ms}`;
      s.seen ??= new Set();
      if (s.seen.has(id)) {
        c.duplicateEvents++;
        return;
      }
      s.seen.add(id);
    }
    c.eventsJoined++;
    if (e.type === 'CLICK') s.clicks++;
    else s.impressions++;
  }

  /** Pass 3: the example of a row (pass 1's rows, again), or null when it is left out (and counted). */
  example(row: FeatureLogRow): Example | null {
    const c = this.c;
    const s = this.slots.get(key(row.request_id, row.ad_id));
    if (!s) throw new Error(`row ${row.request_id}/${row.ad_id} was not added in the first pass`);
    if (s.rows > 1) {
      c.duplicateRows++;
      return null;
    }
    if (s.impressions === 0) {
      if (s.clicks > 0) c.clickedNotShown++;
      else c.notShown++;
      return null;
    }
    const label = s.clicks > 0 ? 1 : 0;
    c.examples++;
    c.positives += label;
    return { ...row, impressions: s.impressions, clicks: s.clicks, label };
  }

  /** Counts so far. */
  counts(): JoinCounts {
    return { ...this.c };
  }
}
