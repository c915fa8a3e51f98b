// Users: the people who log in at terminals (hot-desking).  Add one (with a
// desktop of their own, if any), reset a PIN or password, disable or
// enable, delete.  A secret is only ever sent, never shown back.

import { del, get, path, post } from "./api.js";
import { liveView } from "./live.js";
import { act, badge, confirmDialog, dash, dialogForm, field, h, showError, table, timeCell } from "./ui.js";

const SECRET = { type: "password", minlength: 4, maxlength: 128, required: true, autocomplete: "new-password" };

export default {
  title: "Users",
  needs: "read",
  mount(root, ctx) {
    const listing = h("section", { id: "users-table" });
    const addForm = ctx.may("admin") ? newUserForm(() => view.refresh()) : null;
    root.append(h("h1", {}, "Users"), listing, addForm ? addForm.node : null);

    async function load() {
      const [users, desktops] = await Promise.all([get("users"), get("desktops")]);
      addForm?.setDesktops(desktops.filter((d) => d.configured && !d.pool).map((d) => d.name));
      return users.map((u) => ({
        name: u.name,
        desktop: u.desktop,
        at: u.logged_in_at,
        created: u.created,
        disabled: Boolean(u.disabled),
      }));
    }

    function render(users) {
      return table(
        "",
        ["User", "Own desktop", "Logged in at", "Created", "Account", "Actions"],
        users.map((u) =>
          h(
            "tr",
            { dataset: { user: u.name } },
            h("th", { scope: "row" }, u.name),
            h("td", {}, dash(u.desktop)),
            h("td", {}, u.at ? h("code", {}, u.at) : "-"),
            h("td", {}, timeCell(u.created)),
            h("td", {}, u.disabled ? badge("disabled", "bad") : badge("active", "good")),
            h("td", { className: "actions" }, actions(u)),
          ),
        ),
        "No users yet: terminals log in only when hot-desking is on ([broker] hot_desk).",
      );
    }

    function actions(u) {
      if (!ctx.may("admin")) {
        return [];
      }
      const toggle = u.disabled ? "enable" : "disable";
      return [
        h("button", { type: "button", className: "secondary", dataset: { key: `secret:${u.name}` }, onclick: (e) => resetSecret(e.currentTarget, u.name) }, "Reset password"),
        h(
          "button",
          {
            type: "button",
            className: "secondary",
            dataset: { key: `${toggle}:${u.name}` },
            onclick: (e) =>
              act(e.currentTarget, () => post(`users/${path(u.name)}/${toggle}`, {}), `${u.name} ${toggle}d`).then(view.refresh),
          },
          u.disabled ? "Enable" : "Disable",
        ),
        h("button", { type: "button", className: "danger", dataset: { key: `delete:${u.name}` }, onclick: (e) => remove(e.currentTarget, u.name) }, "Delete"),
      ];
    }

    async function resetSecret(button, name) {
      const form = await dialogForm(
        `New PIN or password for ${name}`,
        [field("PIN or password", { name: "secret", ...SECRET }), field("The same again", { name: "again", ...SECRET })],
        "Set",
      );
      if (form === null) {
        return;
      }
      if (form.get("secret") !== form.get("again")) {
        showError(new Error("The two entries differ; nothing was changed."));
        return;
      }
      await act(button, () => post(`users/${path(name)}/secret`, { secret: form.get("secret") }), `New secret set for ${name}`);
    }

    async function remove(button, name) {
      if (await confirmDialog(`Delete ${name}?`, "If they are logged in, they are logged out.", "Delete")) {
        await act(button, () => del(`users/${path(name)}`), `Deleted ${name}`);
        view.refresh();
      }
    }

    const view = liveView(listing, load, render);
    return { refresh: view.refresh, changed: view.soon, stop: view.stop };
  },
};

function newUserForm(after) {
  const desktop = h("select", { name: "desktop", id: "user-desktop" });
  const submit = h("button", { type: "submit" }, "Add user");
  const form = h(
    "form",
    { id: "add-user", "aria-labelledby": "add-user-title" },
    h("h2", { id: "add-user-title" }, "Add a user"),
    h(
      "fieldset",
      { className: "row" },
      field("Name", { name: "name", id: "user-name", required: true, autocomplete: "off", spellcheck: "false" }),
      field("PIN or password", { name: "secret", id: "user-secret", ...SECRET }),
      field("The same again", { name: "again", id: "user-again", ...SECRET }),
      h("label", { for: "user-desktop" }, "Own desktop", desktop),
    ),
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    if (data.get("secret") !== data.get("again")) {
      showError(new Error("The two entries differ; nothing was changed."));
      return;
    }
    const body = { name: data.get("name").trim(), secret: data.get("secret") };
    if (data.get("desktop")) {
      body.desktop = data.get("desktop");
    }
    if (await act(submit, () => post("users", body), `Added ${body.name}`)) {
      form.reset();
    }
    after();
  });
  return {
    node: h("section", {}, form),
    setDesktops(names) {
      const chosen = desktop.value;
      desktop.replaceChildren(h("option", { value: "" }, "none"), ...names.map((n) => h("option", { value: n }, n)));
      desktop.value = names.includes(chosen) ? chosen : "";
    },
  };
}
