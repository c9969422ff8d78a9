// The REST API with the signed-in user's bearer token (kept in sessionStorage only).
const KEY = "openbdr.token";

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `request failed (${status})`);
    this.status = status;
    this.code = e.code || "error";
    this.hint = e.hint || "";
  }
}

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

export async function raw(method, path, body, extraHeaders = {}) {
  const headers = { ...extraHeaders };
  const t = token.get();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) {
    let parsed = null;
    try { parsed = await res.json(); } catch { /* not JSON */ }
    if (res.status === 401 && t) onUnauthorized();
    throw new ApiError(res.status, parsed);
  }
  return res;
}

export async function api(method, path, body) {
  const res = await raw(method, path.startsWith("/") ? path : `/api/v1/${path}`, body);
  if (res.status === 204) return null;
  return res.json();
}

export const get = (p) => api("GET", p);
export const post = (p, b = {}) => api("POST", p, b);
export const patch = (p, b) => api("PATCH", p, b);
export const del = (p) => api("DELETE", p);

// A binary resource behind the token, as an object URL (images, downloads).
export async function blobUrl(path) {
  const res = await raw("GET", path);
  return URL.createObjectURL(await res.blob());
}

export async function download(path, filename) {
  const url = await blobUrl(path);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
