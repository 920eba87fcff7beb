/**
 * pushrec SDK: live personalized feeds over WebSocket (SSE fallback), event tracking.
 * The DOM helper lives in a separate entry, "pushrec/dom".
 */
export { Client } from "./client.js";
export { CloseCode, closeAction } from "./codes.js";
export { backoffDelay } from "./backoff.js";
export { applyDiff, checksum, crc32, ItemTable, ITEM_TABLE_SIZE, sameVersion } from "./feed.js";
export { jwtExp, memoryStorage } from "./token.js";
export { SUBPROTOCOL } from "./transport-ws.js";
export type * from "./types.js";
