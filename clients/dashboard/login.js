// The login page: an admin account's name and password.
//
// POST /api/v1/login answers {"name", "role", "csrf"} and sets the session
// cookie (HttpOnly: this page never sees it).  Wrong answers say so, as do
// the server's back-off (429, with retry_after) and a locked account (423).

import { post } from "./api.js";
import { h } from "./ui.js";

export default {
  title: "Log in",
  mount(root, { reason, enter }) {
    const problem = h("p", { id: "login-problem", role: "alert", hidden: true });
    const name = h("input", {
      id: "login-name",
      name: "name",
      autocomplete: "username",
      required: true,
      autofocus: true,
      autocapitalize: "none",
      spellcheck: "false",
    });
    const password = h("input", {
      id: "login-password",
      name: "password",
      type: "password",
      autocomplete: "current-password",
      required: true,
      "aria-describedby": "login-problem",
    });
    const submit = h("button", { type: "submit" }, "Log in");
    const form = h(
      "form",
      { id: "login", "aria-labelledby": "login-title" },
      h("label", { for: "login-name" }, "Name"),
      name,
      h("label", { for: "login-password" }, "Password"),
      password,
      problem,
      submit,
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      submit.setAttribute("aria-busy", "true");
      submit.disabled = true;
      problem.hidden = true;
      try {
        const session = await post("login", { name: name.value, password: password.value }, { quietAuth: true });
        password.value = "";
        enter(session);
      } catch (error) {
        problem.textContent = describe(error);
        problem.hidden = false;
        password.select();
      } finally {
        submit.removeAttribute("aria-busy");
        submit.disabled = false;
      }
    });
    root.append(
      h(
        "article",
        { className: "login" },
        h("header", {}, h("h1", { id: "login-title" }, "thinserve"), h("p", {}, "Administration")),
        reason ? h("p", { role: "status" }, reason) : null,
        form,
      ),
    );
    name.focus();
    return {};
  },
};

function describe(error) {
  if (error.status === 401) {
    return "Wrong name or password.";
  }
  if (error.status === 429) {
    const wait = error.body.retry_after;
    return wait ? `Too many attempts; try again in ${Math.ceil(wait)} s.` : error.message;
  }
  return error.hint ? `${error.message}. ${error.hint}` : error.message;
}
