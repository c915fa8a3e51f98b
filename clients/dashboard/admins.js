// Admin accounts and API tokens (admins only).  An admin logs in here; a
// helpdesk account may look, shadow and kick.  A token is shown once, when
// it is made; scripts send it as "Authorization: Bearer TOKEN".

import { del, get, path, post } from "./api.js";
import { liveView, throttled } from "./live.js";
import { act, badge, choice, confirmDialog, dash, dialogForm, field, h, showError, table, timeCell } from "./ui.js";

const PASSWORD = { type: "password", required: true, minlength: 10, maxlength: 128, autocomplete: "new-password" };
const ROLES = [
  ["admin", "admin: everything"],
  ["helpdesk", "helpdesk: look, shadow, kick"],
];

export default {
  title: "Admins and API tokens",
  menu: "Admins",
  needs: "admin",
  mount(root, ctx) {
    const adminsList = h("section", { id: "admins-table" });
    const tokensList = h("section", { id: "tokens-table" });
    const newToken = h("section", { id: "new-token", hidden: true, "aria-live": "polite" });
    const tokenAdmin = h("select", { id: "token-admin", name: "admin", required: true });
    root.append(
      h("h1", {}, "Admins"),
      adminsList,
      newAdminForm(() => admins.refresh()),
      h("h2", {}, "API tokens"),
      tokensList,
      newTokenForm(tokenAdmin, newToken, () => tokens.refresh()),
      newToken,
    );

    const admins = liveView(
      adminsList,
      async () => {
        const rows = await get("admins");
        const names = rows.map((a) => a.name);
        if ([...tokenAdmin.options].map((o) => o.value).join("\n") !== names.join("\n")) {
          const chosen = tokenAdmin.value || ctx.session.name;
          tokenAdmin.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
          tokenAdmin.value = names.includes(chosen) ? chosen : names[0] || "";
        }
        return rows;
      },
      (rows) =>
        table(
          "",
          ["Admin", "Role", "Created", "Account", "Failed logins", "Actions"],
          rows.map((a) =>
            h(
              "tr",
              { dataset: { admin: a.name } },
              h("th", { scope: "row" }, a.name, a.name === ctx.session.name ? h("small", {}, "you") : null),
              h("td", {}, a.role),
              h("td", {}, timeCell(a.created)),
              h(
                "td",
                {},
                a.disabled ? badge("disabled", "bad") : a.locked ? badge("locked", "bad") : badge("active", "good"),
                a.locked ? h("small", {}, "until ", timeCell(a.locked_until)) : null,
              ),
              h("td", {}, a.failures),
              h("td", { className: "actions" }, adminActions(a)),
            ),
          ),
          "No admin accounts.",
        ),
    );

    const tokens = liveView(
      tokensList,
      () => get("tokens"),
      (rows) =>
        table(
          "",
          ["Token", "Admin", "Label", "Created", "Last used", "Actions"],
          rows.map((t) =>
            h(
              "tr",
              { dataset: { token: t.id } },
              h("th", { scope: "row" }, h("code", {}, t.id)),
              h("td", {}, t.admin),
              h("td", {}, dash(t.label)),
              h("td", {}, timeCell(t.created)),
              h("td", {}, t.last_used ? timeCell(t.last_used) : "never"),
              h(
                "td",
                { className: "actions" },
                h(
                  "button",
                  { type: "button", className: "danger", dataset: { key: `token:${t.id}` }, onclick: (e) => removeToken(e.currentTarget, t) },
                  "Remove",
                ),
              ),
            ),
          ),
          "No API tokens.",
        ),
    );

    function adminActions(a) {
      const self = a.name === ctx.session.name;
      const named = (verb) => `admins/${path(a.name)}/${verb}`;
      const simple = (verb, label, done) =>
        h(
          "button",
          {
            type: "button",
            className: "secondary",
            dataset: { key: `${verb}:${a.name}` },
            onclick: (e) => act(e.currentTarget, () => post(named(verb), {}), done).then(refreshAll),
          },
          label,
        );
      const buttons = [
        h("button", { type: "button", className: "secondary", dataset: { key: `password:${a.name}` }, onclick: (e) => setPassword(e.currentTarget, a.name) }, "Set password"),
      ];
      if (a.locked) {
        buttons.push(simple("unlock", "Unlock", `${a.name} unlocked`));
      }
      if (!self) {
        buttons.push(a.disabled ? simple("enable", "Enable", `${a.name} enabled`) : simple("disable", "Disable", `${a.name} disabled`));
        buttons.push(
          h("button", { type: "button", className: "danger", dataset: { key: `remove:${a.name}` }, onclick: (e) => removeAdmin(e.currentTarget, a.name) }, "Remove"),
        );
      }
      return buttons;
    }

    async function setPassword(button, name) {
      const form = await dialogForm(
        `New password for ${name}`,
        [field("Password", { name: "password", ...PASSWORD }), field("The same again", { name: "again", ...PASSWORD })],
        "Set",
      );
      if (form === null) {
        return;
      }
      if (form.get("password") !== form.get("again")) {
        showError(new Error("The two entries differ; nothing was changed."));
        return;
      }
      await act(button, () => post(`admins/${path(name)}/password`, { password: form.get("password") }), `New password set for ${name}`);
    }

    async function removeAdmin(button, name) {
      if (await confirmDialog(`Remove ${name}?`, "The account and its API tokens are removed; its sessions end.", "Remove")) {
        await act(button, () => del(`admins/${path(name)}`), `Removed ${name}`);
        refreshAll();
      }
    }

    async function removeToken(button, t) {
      if (await confirmDialog(`Remove token ${t.id}?`, "Scripts using it are refused from now on.", "Remove")) {
        await act(button, () => del(`tokens/${path(t.id)}`), `Removed token ${t.id}`);
        tokens.refresh();
      }
    }

    function refreshAll() {
      admins.refresh();
      tokens.refresh();
    }

    return {
      refresh: refreshAll,
      changed: throttled(refreshAll),
      stop() {
        admins.stop();
        tokens.stop();
      },
    };
  },
};

function newAdminForm(after) {
  const submit = h("button", { type: "submit" }, "Add admin");
  const form = h(
    "form",
    { id: "add-admin", "aria-labelledby": "add-admin-title" },
    h("h2", { id: "add-admin-title" }, "Add an admin"),
    h(
      "fieldset",
      { className: "row" },
      field("Name", { name: "name", id: "admin-name", required: true, autocomplete: "off", spellcheck: "false" }),
      field("Password", { name: "password", id: "admin-password", ...PASSWORD }),
      field("The same again", { name: "again", id: "admin-again", ...PASSWORD }),
      choice("Role", { name: "role", id: "admin-role" }, ROLES),
    ),
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    if (data.get("password") !== data.get("again")) {
      showError(new Error("The two entries differ; nothing was changed."));
      return;
    }
    const body = { name: data.get("name").trim(), password: data.get("password"), role: data.get("role") };
    if (await act(submit, () => post("admins", body), `Added ${body.name} (${body.role})`)) {
      form.reset();
    }
    after();
  });
  return h("section", {}, form);
}

function newTokenForm(adminSelect, shown, after) {
  const label = h("input", { id: "token-label", name: "label", required: true, autocomplete: "off", placeholder: "monitoring" });
  const submit = h("button", { type: "submit" }, "Make token");
  const form = h(
    "form",
    { id: "add-token", "aria-labelledby": "add-token-title" },
    h("h3", { id: "add-token-title" }, "Make an API token"),
    h(
      "fieldset",
      { className: "row" },
      h("label", { for: "token-admin" }, "For admin", adminSelect),
      h("label", { for: "token-label" }, "Label", label),
      submit,
    ),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = await act(submit, () => post("tokens", { admin: adminSelect.value, label: label.value.trim() }));
    if (answer) {
      form.reset();
      const value = h("input", { id: "token-value", readonly: true, value: answer.token, "aria-label": "The new token" });
      shown.replaceChildren(
        h(
          "article",
          {},
          h("p", {}, h("strong", {}, `Token ${answer.id} for ${answer.admin}: copy it now, it is not shown again.`)),
          value,
          h("small", {}, "Send it as: Authorization: Bearer TOKEN"),
        ),
      );
      shown.hidden = false;
      value.select();
    }
    after();
  });
  return h("section", {}, form);
}
