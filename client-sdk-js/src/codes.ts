/**
 * Close codes of docs/PROTOCOL.md ("Close codes"), the same numbers the server uses. SSE streams
 * end with a `close` event carrying the same codes.
 */
export const CloseCode = {
  /** Server going away (deploy): reconnect, possibly to another node. */
  SHUTDOWN: 4000,
  /** The connection stayed behind too long: reconnect and resume. */
  SLOW: 4001,
  /** Nothing received from the client for two ping intervals: reconnect and resume. */
  HEARTBEAT: 4002,
  /** The node could not reach its feed store: reconnect (another node may serve). */
  UNAVAILABLE: 4003,
  /** The node could not subscribe to the user's updates, so sent no `hello`: reconnect. */
  SETUP_FAILED: 4004,
  /** Too many refused messages or a malformed `auth`: terminal. */
  BAD_REQUEST: 4500,
  /** Token missing, invalid or expired: terminal unless `getToken` can renew it (once). */
  UNAUTHORIZED: 4501,
  /** No `auth` message in time: terminal. */
  AUTH_TIMEOUT: 4502,
  /** A refreshed token names another user: terminal. */
  FORBIDDEN: 4503,
  /** The user's data was erased on request (`DELETE /v1/users/{id}`): terminal. */
  ERASED: 4504,
  /** A message exceeded the server's size limit: terminal. */
  TOO_BIG: 4509,
  /** RFC 6455: malformed framing: terminal. */
  PROTOCOL_ERROR: 1002,
  /** RFC 6455: a text frame that is not UTF-8: terminal. */
  INVALID_DATA: 1007,
} as const;

/**
 * What a close code asks of the client. "reconnect": the server closed on purpose (4000-4499);
 * "terminal": do not reconnect with these credentials (4500-4999, 1002, 1007); "network":
 * anything else (1000, 1001, 1006, 1011, a timeout), which says nothing about the server's view
 * of this client, so reconnect with backoff (or try the next transport before the first hello).
 */
export function closeAction(code: number): "reconnect" | "terminal" | "network" {
  if (code >= 4000 && code < 4500) return "reconnect";
  return code >= 4500 || code == 1002 || code == 1007 ? "terminal" : "network";
}
