/**
 * Experiment routing: a user's bucket is FNV-1a (32-bit) of the UTF-8 bytes of `salt:user_id`,
 * modulo `experiments.buckets`; the arm whose range holds it names the pipeline. Other services
 * can compute the same bucket from this definition.
 */
import type { Config } from './schema';

/** FNV-1a 32-bit of the UTF-8 encoding of `s`. */
export function fnv1a32(s: string): number {
  const bytes = Buffer.from(s, 'utf8');
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i];
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** How a request was routed: the pipeline, the arm ('none' outside every arm, 'explicit' when the request named a pipeline) and the bucket (-1 when not computed). */
export interface Route {
  pipeline: string;
  arm: string;
  bucket: number;
}

/** Routes a request: its own `pipeline` wins; otherwise the user's experiment arm; otherwise default_pipeline. */
export function route(config: Config, userId: string, requested: string): Route {
  if (requested !== '') return { pipeline: requested, arm: 'explicit', bucket: -1 };
  const e = config.experiments;
  if (e.arms.length === 0 || userId === '') return { pipeline: config.default_pipeline, arm: 'none', bucket: -1 };
  const bucket = fnv1a32(`${e.salt}:${userId}`) % e.buckets;
  for (const arm of e.arms) {
    if (bucket >= arm.buckets[0] && bucket <= arm.buckets[1]) return { pipeline: arm.pipeline, arm: arm.name, bucket };
  }
  return { pipeline: config.default_pipeline, arm: 'none', bucket };
}
