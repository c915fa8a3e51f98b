// The audit log: who did what to which terminal, desktop, user or account.
//
// The server filters by subject, actor (a part of it) and action, and pages
// by entry id (before: older, after: newer).  Entries show newest first.

import { get } from "./api.js";
import { liveView } from "./live.js";
import { dash, h, table, timeCell } from "./ui.js";

const PAGE = 50;

export default {
  title: "Audit log",
  menu: "Audit",
  needs: "read",
  mount(root) {
    const filters = { subject: "", actor: "", action: "" };
    let position = {}; // {} newest, {before: id} older, {after: id} newer
    let oldest = null;
    let newest = null;

    const subject = h("input", { id: "audit-subject", name: "subject", autocomplete: "off", placeholder: "viewer-10.0.0.7" });
    const actor = h("input", { id: "audit-actor", name: "actor", autocomplete: "off", placeholder: "web:alice" });
    const action = h("input", { id: "audit-action", name: "action", autocomplete: "off", list: "audit-actions", placeholder: "pair" });
    const actions = h("datalist", { id: "audit-actions" });
    const form = h(
      "form",
      { id: "audit-filter", "aria-label": "Filter the audit log" },
      h(
        "fieldset",
        { className: "row" },
        h("label", { for: "audit-subject" }, "Subject", subject),
        h("label", { for: "audit-actor" }, "Actor", actor),
        h("label", { for: "audit-action" }, "Action", action, actions),
        h("button", { type: "submit" }, "Filter"),
      ),
    );
    const listing = h("section", { id: "audit-table" });
    const newer = h("button", { type: "button", className: "secondary", id: "audit-newer" }, "← Newer");
    const older = h("button", { type: "button", className: "secondary", id: "audit-older" }, "Older →");
    const pager = h("nav", { className: "pager", "aria-label": "Audit pages" }, newer, older);
    root.append(h("h1", {}, "Audit log"), form, listing, pager);

    form.addEventListener("submit", (event) => {
      event.preventDefault();
      filters.subject = subject.value.trim();
      filters.actor = actor.value.trim();
      filters.action = action.value.trim();
      position = {};
      view.refresh();
    });
    older.addEventListener("click", () => {
      position = { before: oldest };
      view.refresh();
    });
    newer.addEventListener("click", () => {
      position = { after: newest };
      view.refresh();
    });

    async function load() {
      const query = new URLSearchParams({ limit: String(PAGE) });
      for (const name of ["subject", "actor", "action"]) {
        if (filters[name]) {
          query.set(name, filters[name]);
        }
      }
      for (const [name, value] of Object.entries(position)) {
        query.set(name, String(value));
      }
      const entries = await get(`audit?${query}`);
      if (position.after !== undefined && entries.length < Number(query.get("limit"))) {
        position = {}; // reached the newest entries: follow them again
      }
      oldest = entries.length ? entries[0].id : null;
      newest = entries.length ? entries[entries.length - 1].id : null;
      older.disabled = entries.length === 0 || entries[0].id <= 1;
      newer.disabled = position.before === undefined && position.after === undefined;
      const seen = [...new Set(entries.map((e) => e.action))].sort();
      actions.replaceChildren(...seen.map((a) => h("option", { value: a })));
      return entries.reverse();
    }

    function render(entries) {
      return table(
        "",
        ["#", "Time", "Actor", "Action", "Subject", "Detail"],
        entries.map((e) =>
          h(
            "tr",
            {},
            h("td", {}, e.id),
            h("td", {}, timeCell(e.time)),
            h("td", {}, h("code", {}, e.actor)),
            h("td", {}, e.action),
            h("td", { className: "id" }, dash(e.subject)),
            h("td", {}, dash(e.detail)),
          ),
        ),
        "No entries match.",
      );
    }

    const view = liveView(listing, load, render);
    return { refresh: view.refresh, changed: view.soon, stop: view.stop };
  },
};
