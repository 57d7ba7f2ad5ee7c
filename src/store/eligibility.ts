/**
 * Eligibility by targeting for a data directory: the store's ads loaded into the native
 * TargetingIndex, keyed by the same internal ids as the ANN index, so one match() answers both
 * "which ads may this request see" as a bitset for the ANN filter and as ids the other sources
 * iterate.
 */
import { TargetingIndex, type TargetingIndex as Targeting } from '../native/index';
import type { CatalogStore } from './catalog-store';

/** Builds a TargetingIndex holding every ad of `store` (absent targeting = everyone). */
export function loadTargetingIndex(store: CatalogStore): Targeting {
  const index = new TargetingIndex();
  for (const ad of store.ads()) index.set(ad.id, ad.targeting ?? undefined);
  return index;
}
