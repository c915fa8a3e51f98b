// The dashboard's only way to the server: JSON over fetch, same origin.
//
// Every change (POST, PUT, PATCH, DELETE) carries the session's CSRF token
// in X-CSRF-Token; the cookie alone is not enough for the server to act.
// Error answers ({"code", "message", "hint", ...}) become ApiError, which
// the pages show as a visible message with its hint.

export const API = "/api/v1";

let csrfToken = "";
const unauthenticatedListeners = [];

export class ApiError extends Error {
  constructor(status, body) {
    const message = body.message || body.error || `the server answered ${status}`;
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = body.code || "";
    this.hint = body.hint || "";
    this.body = body;
  }
}

export function setCsrf(token) {
  csrfToken = token || "";
}

// Called with the error when any call (other than logging in) answers 401:
// the session ended, and the app goes back to its login page.
export function onUnauthenticated(listener) {
  unauthenticatedListeners.push(listener);
}

// Path segments (terminal ids, user names) are percent-encoded.
export function path(...segments) {
  return segments.map((s) => encodeURIComponent(String(s))).join("/");
}

export async function api(method, route, body, { quietAuth = false } = {}) {
  const headers = { Accept: "application/json" };
  const unsafe = !["GET", "HEAD"].includes(method);
  let payload;
  if (unsafe) {
    headers["X-CSRF-Token"] = csrfToken;
    if (method !== "DELETE" || body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body ?? {});
    }
  }
  let response;
  try {
    response = await fetch(`${API}/${route}`, {
      method,
      headers,
      body: payload,
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (error) {
    throw new ApiError(0, {
      code: "unreachable",
      message: "the server cannot be reached",
      hint: "check that thinserve is running, then try again",
    });
  }
  const answer = await readBody(response);
  if (!response.ok) {
    const error = new ApiError(response.status, answer);
    if (response.status === 401 && !quietAuth) {
      unauthenticatedListeners.forEach((listener) => listener(error));
    }
    throw error;
  }
  return answer;
}

async function readBody(response) {
  const text = await response.text();
  if (!text) {
    return {};
  }
  try {
    return JSON.parse(text);
  } catch {
    return { message: `the server answered ${response.status} ${response.statusText}` };
  }
}

export const get = (route, options) => api("GET", route, undefined, options);
export const post = (route, body, options) => api("POST", route, body ?? {}, options);
export const del = (route, options) => api("DELETE", route, undefined, options);
