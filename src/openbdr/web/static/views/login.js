// Sign in with a user name and password (a 12-hour session token) or with an API token.
import { api, token } from "../js/api.js";
import { fill, h, showError } from "../js/dom.js";

export function loginView(root, done) {
  const err = h("p", { class: "error", id: "login-error", role: "alert" });
  const byPassword = h("form", { class: "stack", id: "login-form", "aria-labelledby": "login-title" },
    h("div", {}, h("label", { for: "login-name" }, "User name"),
      h("input", { id: "login-name", name: "name", type: "text", autocomplete: "username", required: true })),
    h("div", {}, h("label", { for: "login-password" }, "Password"),
      h("input", { id: "login-password", name: "password", type: "password", autocomplete: "current-password", required: true })),
    h("div", {}, h("button", { type: "submit" }, "Sign in")));
  byPassword.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.textContent = "";
    try {
      const out = await api("POST", "auth/login", {
        name: byPassword.elements.name.value, password: byPassword.elements.password.value,
      });
      token.set(out.token);
      done();
    } catch (ex) { err.textContent = ex.message; }
  });
  const byToken = h("form", { class: "stack", id: "token-form" },
    h("div", {}, h("label", { for: "login-token" }, "API token"),
      h("input", { id: "login-token", name: "token", type: "password", autocomplete: "off", required: true }),
      h("span", { class: "hint" }, "e.g. the first admin's token in the server's data directory (admin.token)")),
    h("div", {}, h("button", { type: "submit", class: "secondary" }, "Use token")));
  byToken.addEventListener("submit", async (e) => {
    e.preventDefault();
    token.set(byToken.elements.token.value.trim());
    try { done(); } catch (ex) { showError(ex); }
  });
  fill(root, h("section", { class: "login card" },
    h("h1", { id: "login-title" }, "Sign in to OpenBDR"), err, byPassword,
    h("details", {}, h("summary", {}, "Sign in with an API token"), byToken)));
  document.title = "Sign in · OpenBDR console";
  byPassword.elements.name.focus();
}
