// The one way the app talks to the server: JSON over fetch with the CSRF header on writes,
// errors as ApiError (the server answered) or NetworkError (it could not be reached).

const CSRF_KEY = "svp.csrf";
const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

export class NetworkError extends Error {}

let unauthenticatedHandler = () => {};

/** Called with no arguments whenever the server answers 401 (the session is gone). */
export function onUnauthenticated(fn) {
  unauthenticatedHandler = fn;
}

/** The CSRF token the login answered; kept in localStorage so a reload or a new tab can write. */
export function setCsrf(token) {
  if (token) localStorage.setItem(CSRF_KEY, token);
  else localStorage.removeItem(CSRF_KEY);
}

function csrf() {
  return localStorage.getItem(CSRF_KEY);
}

/** Turn FastAPI's `detail` (a string, or a list of validation errors) into one sentence. */
export function detailText(data, fallback) {
  const detail = data && data.detail !== undefined ? data.detail : data;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d) => {
        const where = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
        return where ? `${where}: ${d.msg}` : d.msg;
      })
      .join("; ");
  }
  if (detail && typeof detail === "object") return JSON.stringify(detail);
  return fallback || "the server answered with an error";
}

function headers(method, json) {
  const h = { Accept: "application/json" };
  if (json) h["Content-Type"] = "application/json";
  const token = csrf();
  if (!SAFE.has(method) && token) h["X-CSRF-Token"] = token;
  return h;
}

/** Send a request; resolves to the parsed JSON body (null for 204), rejects with ApiError/NetworkError. */
export async function api(method, path, body, { signal } = {}) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: headers(method, body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
      signal,
    });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new NetworkError("the server cannot be reached");
  }
  const text = res.status === 204 ? "" : await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    if (res.status === 401 && !path.startsWith("/api/auth/login")) unauthenticatedHandler();
    throw new ApiError(res.status, detailText(data, `${res.status} ${res.statusText}`));
  }
  return data;
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body, opts) => api("POST", path, body, opts);
export const put = (path, body, opts) => api("PUT", path, body, opts);
export const patch = (path, body, opts) => api("PATCH", path, body, opts);
export const del = (path, opts) => api("DELETE", path, undefined, opts);

/**
 * POST a multipart form with XMLHttpRequest, because fetch cannot report upload progress.
 * `onProgress(loaded, total)` is called as bytes leave the browser.
 */
export function upload(path, formData, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.withCredentials = true;
    xhr.setRequestHeader("Accept", "application/json");
    const token = csrf();
    if (token) xhr.setRequestHeader("X-CSRF-Token", token);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    };
    xhr.onload = () => {
      let data = null;
      try {
        data = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        data = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else {
        if (xhr.status === 401) unauthenticatedHandler();
        reject(new ApiError(xhr.status, detailText(data, `${xhr.status} ${xhr.statusText}`)));
      }
    };
    xhr.onerror = () => reject(new NetworkError("the upload was cut off: the server cannot be reached"));
    xhr.onabort = () => reject(new NetworkError("the upload was stopped"));
    xhr.send(formData);
  });
}
