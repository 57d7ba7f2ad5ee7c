/**
 * The direct targeting evaluator: CONTRACT section 1 read literally, one ad at a time. It is the
 * reference the TargetingIndex is tested against, the "direct scan" peer of the targeting
 * benchmark, and the check behind the eligibility invariant. Pure TypeScript, no native code.
 */
import type { Conjunction, Predicate, RequestAttributes } from '../native/index';

/** The request's values for `name`, or undefined when the request does not carry it (own properties only, so `constructor` or `__proto__` are ordinary names). */
function requestValues(attrs: RequestAttributes, name: string): readonly string[] | undefined {
  return Object.prototype.hasOwnProperty.call(attrs, name) ? attrs[name] : undefined;
}

function intersects(list: readonly string[], values: readonly string[] | undefined): boolean {
  if (values === undefined || values.length === 0 || list.length === 0) return false;
  return list.some((v) => values.includes(v));
}

/**
 * Whether one predicate holds: `any_of` needs the request's values to intersect it (a request
 * without the attribute, or with `[]` for it, fails); `none_of` needs them not to (such a
 * request passes); both present means both must hold; neither present holds.
 */
export function predicateHolds(predicate: Predicate, values: readonly string[] | undefined): boolean {
  if (predicate.any_of !== undefined && !intersects(predicate.any_of, values)) return false;
  if (predicate.none_of !== undefined && intersects(predicate.none_of, values)) return false;
  return true;
}

/** Whether every predicate of the conjunction holds (`{}` always holds). */
export function conjunctionHolds(conjunction: Conjunction, attrs: RequestAttributes): boolean {
  for (const name of Object.keys(conjunction)) {
    if (!predicateHolds(conjunction[name], requestValues(attrs, name))) return false;
  }
  return true;
}

/**
 * Whether an ad with this targeting may be shown to a request with these attributes: absent
 * (`undefined`/`null`) targeting matches everyone, otherwise ANY conjunction must hold. An empty
 * list (invalid in a catalog) matches nothing. Strings are compared exactly.
 */
export function evaluateTargeting(
  targeting: readonly Conjunction[] | undefined | null,
  attrs: RequestAttributes,
): boolean {
  if (targeting === undefined || targeting === null) return true;
  for (const conjunction of targeting) {
    if (conjunctionHolds(conjunction, attrs)) return true;
  }
  return false;
}
