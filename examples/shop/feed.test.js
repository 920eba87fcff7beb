// Unit tests for feed.js; run with `node --test examples/shop/` (Node >= 18, no dependencies).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { applyDiff, sameVersion, checksum } = require('./feed.js');

const item = (id, extra = {}) => ({ id, title: 'Item ' + id, price: 1, ...extra });
const ids = (list) => list.map((x) => x.id);
const held = ['a', 'b', 'c', 'd'].map((id) => item(id));

test('copy ranges and insert new items in order', () => {
  const diff = {
    order: ['x', [0, 2], 'y', [3, 1]],
    items: { x: item('x'), y: item('y', { price: 5 }) },
    patch: {},
  };
  const out = applyDiff(held, diff);
  assert.deepEqual(ids(out), ['x', 'a', 'b', 'y', 'd']);
  assert.equal(out[3].price, 5);
  assert.equal(out[1], held[0], 'unchanged items keep their object');
});

test('patch merges changed fields into a copy and leaves the held list alone', () => {
  const before = JSON.stringify(held);
  const out = applyDiff(held, { order: [[0, 4]], patch: { b: { price: 9.99, in_stock: false } } });
  assert.deepEqual(out[1], { id: 'b', title: 'Item b', price: 9.99, in_stock: false });
  assert.equal(JSON.stringify(held), before);
});

test('a patch field set to null removes it', () => {
  const withImage = [item('a', { image: '/shop/img/misc.svg' })];
  const out = applyDiff(withImage, { order: [[0, 1]], patch: { a: { image: null, price: 2 } } });
  assert.deepEqual(out, [{ id: 'a', title: 'Item a', price: 2 }]);
  assert.equal(withImage[0].image, '/shop/img/misc.svg');
});

test('patch applies to items that are new in the same diff', () => {
  const out = applyDiff(held, { order: ['z'], items: { z: item('z') }, patch: { z: { price: 2 } } });
  assert.deepEqual(out, [{ id: 'z', title: 'Item z', price: 2 }]);
});

test('patch for an id not in the new list is ignored; missing items/patch are fine', () => {
  assert.deepEqual(ids(applyDiff(held, { order: [[2, 2]], patch: { a: { price: 0 } } })), ['c', 'd']);
  assert.deepEqual(applyDiff(held, { order: [] }), []);
  assert.deepEqual(ids(applyDiff([], { order: ['n'], items: { n: item('n') } })), ['n']);
});

test('reordering by single-item ranges', () => {
  const out = applyDiff(held, { order: [[3, 1], [2, 1], [1, 1], [0, 1]] });
  assert.deepEqual(ids(out), ['d', 'c', 'b', 'a']);
});

test('a payload without id gets the id it was sent under', () => {
  const out = applyDiff(held, { order: ['q'], items: { q: { title: 'Q' } } });
  assert.deepEqual(out, [{ title: 'Q', id: 'q' }]);
});

test('diffs that do not fit the held list throw FeedDiffError', () => {
  const bad = [
    { order: [[2, 3]] }, // past the end
    { order: [[-1, 1]] },
    { order: [[0, 1, 2]] },
    { order: [[0.5, 1]] },
    { order: ['missing'] },
    { order: [42] },
    { order: [[0, 1], [0, 1]] }, // duplicate id
    { order: ['a', [0, 1]], items: { a: item('a') } },
    { order: ['__proto__'], items: {} },
    {},
  ];
  for (const diff of bad) {
    assert.throws(() => applyDiff(held, diff), { name: 'FeedDiffError' }, JSON.stringify(diff));
  }
  assert.throws(() => applyDiff(null, { order: [] }), { name: 'FeedDiffError' });
});

test('patch cannot change the prototype', () => {
  const patch = JSON.parse('{"a": {"__proto__": {"polluted": true}, "price": 3}}');
  const out = applyDiff(held, { order: [[0, 1]], patch });
  assert.equal(out[0].price, 3);
  assert.equal(out[0].polluted, undefined);
  assert.equal({}.polluted, undefined);
});

test('sameVersion compares epoch and n', () => {
  assert.ok(sameVersion(['ep1', 3], ['ep1', 3]));
  assert.ok(!sameVersion(['ep1', 3], ['ep1', 4]));
  assert.ok(!sameVersion(['ep1', 3], ['ep2', 3]));
  assert.ok(!sameVersion(null, ['ep1', 3]));
  assert.ok(!sameVersion(['ep1'], ['ep1']));
});

test('checksum is CRC-32 of the ids joined by 0x1F (values from Python zlib.crc32)', () => {
  assert.equal(checksum([]), '00000000');
  assert.equal(checksum([{ id: '1005115' }]), '44918a16');
  assert.equal(checksum(['1005115', '1004767', 'a'].map((id) => ({ id }))), '240f24c3');
  assert.equal(checksum([{ id: 'é' }, { id: 'x' }]), '00910f8b');
});
