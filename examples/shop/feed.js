/*
 * Feed diff application for the pushrec demo shop. No dependencies, no build step: a plain
 * script that sets `window.PushrecFeed` in a browser and `module.exports` under Node.
 *
 * A diff frame looks like
 *   {"type":"diff","feed":"home","base":["ep1",3],"version":["ep1",4],
 *    "order":["999",[0,11]],"items":{"999":{...}},"patch":{"123":{"price":9.99}},"sum":"..."}
 * `order` is the new list: a string is an item id whose payload is in `items`; a pair
 * [start, length] copies held[start:start+length]. `patch` then merges changed fields into
 * items of the new list (a field set to null is removed). The caller checks `base` against the
 * version it holds (sameVersion) before calling applyDiff, and the result against `sum`
 * (checksum); applyDiff throws a FeedDiffError when the diff does not fit the held list. On any
 * of these the caller drops its state and asks for a snapshot (reconnects). Wire format:
 * docs/PROTOCOL.md.
 */
(function (root) {
  'use strict';

  var hasOwn = Object.prototype.hasOwnProperty;

  function FeedDiffError(message) {
    var err = new Error(message);
    err.name = 'FeedDiffError';
    return err;
  }

  /** A shallow copy of `payload` with the fields of `changes` merged in (own keys only). */
  function merge(payload, changes) {
    var out = {};
    var key;
    for (key in payload) {
      if (hasOwn.call(payload, key) && key !== '__proto__') out[key] = payload[key];
    }
    for (key in changes) {
      if (!hasOwn.call(changes, key) || key === '__proto__') continue;
      if (changes[key] === null) delete out[key]; // protocol: a field set to null is removed
      else out[key] = changes[key];
    }
    return out;
  }

  function isRange(op) {
    return (
      Array.isArray(op) &&
      op.length === 2 &&
      Number.isInteger(op[0]) &&
      Number.isInteger(op[1]) &&
      op[0] >= 0 &&
      op[1] >= 0
    );
  }

  /**
   * Build the new list from `held` (array of payload objects, each with a string `id`) and a
   * diff frame. Returns a new array; `held` and its objects are not modified (patched items are
   * copies). Throws FeedDiffError when an op is malformed, a range falls outside `held`, a new
   * id has no payload, or an id would appear twice.
   */
  function applyDiff(held, diff) {
    if (!Array.isArray(held)) throw FeedDiffError('held items must be an array');
    if (!diff || !Array.isArray(diff.order)) throw FeedDiffError('diff has no order list');
    var payloads = diff.items && typeof diff.items === 'object' ? diff.items : {};
    var patch = diff.patch && typeof diff.patch === 'object' ? diff.patch : {};
    var out = [];
    var seen = Object.create(null);

    function push(item, id) {
      if (seen[id]) throw FeedDiffError('item ' + id + ' appears twice in the new list');
      seen[id] = true;
      out.push(item);
    }

    for (var i = 0; i < diff.order.length; i++) {
      var op = diff.order[i];
      if (typeof op === 'string') {
        if (!hasOwn.call(payloads, op) || !payloads[op] || typeof payloads[op] !== 'object') {
          throw FeedDiffError('no payload for new item ' + op);
        }
        var fresh = payloads[op];
        push(fresh.id === op ? fresh : merge(fresh, { id: op }), op);
      } else if (isRange(op)) {
        var start = op[0];
        var end = op[0] + op[1];
        if (end > held.length) {
          throw FeedDiffError(
            'range [' + start + ',' + op[1] + '] is outside the held list of ' + held.length
          );
        }
        for (var j = start; j < end; j++) push(held[j], String(held[j].id));
      } else {
        throw FeedDiffError('bad order element at ' + i + ': ' + JSON.stringify(op));
      }
    }

    // Changed fields for an id that is not in the new list are ignored: there is nothing to show.
    for (var k = 0; k < out.length; k++) {
      var id = String(out[k].id);
      if (hasOwn.call(patch, id) && patch[id] && typeof patch[id] === 'object') {
        out[k] = merge(out[k], patch[id]);
      }
    }
    return out;
  }

  var CRC_TABLE = (function () {
    var table = [];
    for (var n = 0; n < 256; n++) {
      var c = n;
      for (var k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table.push(c >>> 0);
    }
    return table;
  })();

  /**
   * The list checksum of docs/PROTOCOL.md: CRC-32 of the UTF-8 item ids joined by the byte 0x1F,
   * as 8 lower-case hex digits.
   */
  function checksum(items) {
    var joined = items.map(function (item) { return String(item.id); }).join('\x1f');
    var bytes = new TextEncoder().encode(joined);
    var crc = 0xffffffff;
    for (var i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
    return ('0000000' + ((crc ^ 0xffffffff) >>> 0).toString(16)).slice(-8);
  }

  /** True when two versions ([epoch, n]) are the same; false for anything malformed. */
  function sameVersion(a, b) {
    return (
      Array.isArray(a) &&
      Array.isArray(b) &&
      a.length === 2 &&
      b.length === 2 &&
      String(a[0]) === String(b[0]) &&
      a[1] === b[1]
    );
  }

  var api = { applyDiff: applyDiff, sameVersion: sameVersion, checksum: checksum };
  if (typeof module !== 'undefined' && module.exports) module.exports = api;
  if (root) root.PushrecFeed = api;
})(typeof window !== 'undefined' ? window : null);
