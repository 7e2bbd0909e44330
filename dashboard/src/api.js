// The API of the server the page came from. Relative URLs only: the dashboard talks to no other host.

const KEY = "tidemark.key";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function problem(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || response.statusText;
  } catch {
    return response.statusText;
  }
}

export async function getJson(path) {
  const response = await fetch(path, { headers: { accept: "application/json" } });
  if (!response.ok) throw new ApiError(response.status, await problem(response));
  return response.json();
}

export async function postJson(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: {
      accept: "application/json",
      "content-type": "application/json",
      authorization: `Bearer ${apiKey()}`,
    },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new ApiError(response.status, await problem(response));
  return response.json();
}

/** The municipality's API key, kept for this tab only (sessionStorage). */
export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

/** A path on this server, whatever public URL the API wrote into a link. */
export function local(url) {
  const parsed = new URL(url, location.href);
  return parsed.pathname + parsed.search;
}
