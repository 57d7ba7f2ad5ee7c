/**
 * Shards (CONTRACT section 6): the shard of an ad is `fnv1a32(utf8(ad_id)) mod N`, and a
 * replica names its shard as `I/N` on the command line.
 */

/** FNV-1a, 32-bit, over the UTF-8 bytes of `s` (offset 2166136261, prime 16777619). */
export function fnv1a32(s: string): number {
  let h = 0x811c9dc5;
  const bytes = Buffer.from(s, 'utf8');
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i];
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** The shard (0..n-1) that owns `adId` among `n`. */
export function shardOf(adId: string, n: number): number {
  return fnv1a32(adId) % n;
}

/** Shard `index` of `count`. */
export interface ShardSpec {
  index: number;
  count: number;
}

/** Parses `I/N` (0 <= I < N <= 1024); throws an Error naming the flag otherwise. */
export function parseShardSpec(text: string, flag = '--shard'): ShardSpec {
  const m = /^(\d{1,4})\/(\d{1,4})$/.exec(text.trim());
  if (!m) throw new Error(`${flag} must be I/N (shard I of N, 0-based), got "${text}"`);
  const index = Number(m[1]);
  const count = Number(m[2]);
  if (count < 1 || count > 1024) throw new Error(`${flag}: N must be in 1..1024, got ${count}`);
  if (index >= count) throw new Error(`${flag}: I must be in 0..${count - 1}, got ${index}`);
  return { index, count };
}

/** The stream subject of shard I of N: `<prefix>.<N>.<I>`. */
export function shardSubject(prefix: string, shard: ShardSpec): string {
  return `${prefix}.${shard.count}.${shard.index}`;
}
