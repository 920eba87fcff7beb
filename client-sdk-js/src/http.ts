import type { FetchLike, ResponseLike } from "./types.js";

/** POST a JSON body (or none) with an optional Bearer token. */
export function post(
  fetch: FetchLike,
  url: string,
  body?: unknown,
  token?: string,
  keepalive?: boolean,
): Promise<ResponseLike> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = "Bearer " + token;
  return fetch(url, {
    method: "POST",
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    keepalive,
  });
}
