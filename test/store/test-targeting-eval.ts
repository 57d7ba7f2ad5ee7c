import { strict as assert } from 'node:assert';
import type { RequestAttributes, Targeting } from '../../src/native/index';
import { conjunctionHolds, evaluateTargeting, predicateHolds } from '../../src/store/targeting-eval';

describe('evaluateTargeting', function () {
  const usOrCa: Targeting = [{ country: { any_of: ['US', 'CA'] } }];

  it('when targeting is absent or null, then every request matches, even an empty one', () => {
    for (const attrs of [{}, { country: ['US'] }, { country: [] }]) {
      assert.equal(evaluateTargeting(undefined, attrs), true);
      assert.equal(evaluateTargeting(null, attrs), true);
    }
  });

  it('when the list is empty (invalid in a catalog), then nothing matches', () => {
    assert.equal(evaluateTargeting([], {}), false);
    assert.equal(evaluateTargeting([], { country: ['US'] }), false);
  });

  it('when the only conjunction is {}, then every request matches', () => {
    assert.equal(evaluateTargeting([{}], {}), true);
    assert.equal(evaluateTargeting([{}], { country: ['US'] }), true);
  });

  it('when any_of intersects the request values, then it holds; otherwise, or when the attribute is missing or [], then it fails', () => {
    assert.equal(evaluateTargeting(usOrCa, { country: ['CA'] }), true);
    assert.equal(evaluateTargeting(usOrCa, { country: ['FR', 'US'] }), true);
    assert.equal(evaluateTargeting(usOrCa, { country: ['FR'] }), false);
    assert.equal(evaluateTargeting(usOrCa, {}), false);
    assert.equal(evaluateTargeting(usOrCa, { country: [] }), false);
    assert.equal(evaluateTargeting(usOrCa, { country: undefined }), false);
  });

  it('when none_of intersects the request values, then it fails; when the attribute is missing or [], then it holds', () => {
    const notNsfw: Targeting = [{ community: { none_of: ['r/nsfw'] } }];
    assert.equal(evaluateTargeting(notNsfw, { community: ['r/nsfw'] }), false);
    assert.equal(evaluateTargeting(notNsfw, { community: ['r/gaming', 'r/nsfw'] }), false);
    assert.equal(evaluateTargeting(notNsfw, { community: ['r/gaming'] }), true);
    assert.equal(evaluateTargeting(notNsfw, {}), true);
    assert.equal(evaluateTargeting(notNsfw, { community: [] }), true);
  });

  it('when a predicate has both lists, then both must hold', () => {
    const p = { any_of: ['US', 'CA'], none_of: ['CA'] };
    assert.equal(predicateHolds(p, ['US']), true);
    assert.equal(predicateHolds(p, ['US', 'CA']), false);
    assert.equal(predicateHolds(p, ['CA']), false);
    assert.equal(predicateHolds(p, undefined), false);
  });

  it('when a list is empty, then an empty any_of never holds and an empty none_of always holds', () => {
    assert.equal(predicateHolds({ any_of: [] }, ['US']), false);
    assert.equal(predicateHolds({ any_of: [] }, undefined), false);
    assert.equal(predicateHolds({ none_of: [] }, ['US']), true);
    assert.equal(predicateHolds({ none_of: [] }, undefined), true);
  });

  it('when a conjunction has several predicates, then all must hold; when an ad has several conjunctions, then one suffices', () => {
    const both: Targeting = [{ country: { any_of: ['US'] }, platform: { any_of: ['ios'] } }];
    assert.equal(evaluateTargeting(both, { country: ['US'], platform: ['ios'] }), true);
    assert.equal(evaluateTargeting(both, { country: ['US'], platform: ['web'] }), false);
    const either: Targeting = [{ country: { any_of: ['GB'] } }, { platform: { any_of: ['web'] } }];
    assert.equal(evaluateTargeting(either, { country: ['GB'] }), true);
    assert.equal(evaluateTargeting(either, { platform: ['web'] }), true);
    assert.equal(evaluateTargeting(either, { country: ['US'], platform: ['ios'] }), false);
  });

  it('when values repeat, then the answer is the same as without repeats', () => {
    assert.equal(evaluateTargeting(usOrCa, { country: ['US', 'US'] }), true);
    assert.equal(evaluateTargeting([{ country: { none_of: ['US', 'US'] } }], { country: ['US', 'US'] }), false);
  });

  it('when strings differ only by case or Unicode normalisation, then they do not match', () => {
    const t: Targeting = [{ community: { any_of: ['r/Zürich', 'r/日本'] } }];
    assert.equal(evaluateTargeting(t, { community: ['r/Zürich'] }), true);
    assert.equal(evaluateTargeting(t, { community: ['r/Zu\u0308rich'] }), false);
    assert.equal(evaluateTargeting(t, { community: ['r/zürich'] }), false);
    assert.equal(evaluateTargeting(t, { community: ['r/日本'] }), true);
  });

  it('when an attribute is named like an Object.prototype member, then only the request\'s own values count', () => {
    const t: Targeting = [{ constructor: { any_of: ['x'] } }, { toString: { none_of: ['y'] } }];
    assert.equal(conjunctionHolds(t[0], {}), false);
    assert.equal(conjunctionHolds(t[1], {}), true);
    const own = JSON.parse('{"__proto__": ["x"]}') as RequestAttributes;
    assert.equal(evaluateTargeting([JSON.parse('{"__proto__": {"any_of": ["x"]}}')], own), true);
    assert.equal(evaluateTargeting([JSON.parse('{"__proto__": {"any_of": ["x"]}}')], {}), false);
  });
});
