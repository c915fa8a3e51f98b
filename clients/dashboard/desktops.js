// Desktops and pools: each desktop's state (and why, when it failed), its
// link, who holds it; start, stop, reset, forget; the admin's own viewer.

import { del, get, path, post } from "./api.js";
import { liveView } from "./live.js";
import { openViewer } from "./viewer-open.js";
import { act, badge, confirmDialog, h, size, table } from "./ui.js";

const STATE_TONE = { running: "good", starting: "busy", stopping: "busy", held: "busy", stopped: "none", failed: "bad" };
const LINK_TONE = { live: "good", connecting: "busy", down: "none" };

export default {
  title: "Desktops and pools",
  menu: "Desktops",
  needs: "read",
  mount(root, ctx) {
    const pools = h("section", { id: "pools" });
    const listing = h("section", { id: "desktops-table" });
    root.append(h("h1", {}, "Desktops"), listing, pools);

    async function load() {
      const desktops = await get("desktops");
      return desktops.map((d) => ({
        name: d.name,
        backend: d.backend,
        pool: d.pool,
        configured: d.configured,
        state: d.state,
        link: d.mirror,
        detail: d.detail,
        size: d.size,
        controlledBy: d.controlled_by,
        user: d.controlling_user,
        watchers: d.watchers,
        paired: d.paired_terminal,
        owner: d.owner,
        lease: d.lease,
      }));
    }

    function render(desktops) {
      replacePools(desktops);
      return table(
        "",
        ["Desktop", "State", "Size", "Held by", "Given to", "Actions"],
        desktops.map((d) =>
          h(
            "tr",
            { dataset: { desktop: d.name } },
            h("th", { scope: "row" }, d.name, h("small", {}, d.backend)),
            h(
              "td",
              {},
              d.configured ? badge(d.state || "-", STATE_TONE[d.state]) : badge("not configured", "none"),
              d.link ? h("small", {}, "link ", badge(d.link, LINK_TONE[d.link])) : null,
              d.detail ? h("small", { className: d.state === "failed" ? "why bad" : "why" }, d.detail) : null,
            ),
            h("td", {}, size(d.size)),
            h("td", {}, holder(d)),
            h("td", {}, assignment(d)),
            h("td", { className: "actions" }, actions(d)),
          ),
        ),
        "No desktop is configured.",
      );
    }

    // Who the desktop is for: a paired terminal, an owning user, a pool.
    function assignment(d) {
      const lines = [];
      if (d.paired) {
        lines.push(h("span", {}, "paired with ", h("span", { className: "id" }, d.paired)));
      }
      if (d.owner) {
        lines.push(h("span", {}, `owned by ${d.owner}`));
      }
      if (d.pool) {
        lines.push(h("span", {}, `pool ${d.pool}`));
      }
      return lines.length ? lines.map((line) => h("div", {}, line)) : "-";
    }

    function replacePools(desktops) {
      const byPool = new Map();
      for (const d of desktops.filter((x) => x.pool)) {
        byPool.set(d.pool, [...(byPool.get(d.pool) || []), d]);
      }
      const rows = [...byPool.entries()].map(([pool, members]) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, pool),
          h("td", {}, members.length),
          h("td", {}, members.filter((d) => d.state === "running").length),
          h("td", {}, members.filter((d) => d.lease || d.controlledBy).length),
          h("td", {}, members.filter((d) => d.state === "failed").length),
          h("td", {}, members.map((d) => d.name).join(", ")),
        ),
      );
      pools.replaceChildren(
        h("h2", {}, "Pools"),
        table("", ["Pool", "Desktops", "Running", "In use", "Failed", "Members"], rows, "No pools are configured."),
      );
    }

    function holder(d) {
      const watching = d.watchers.length ? h("small", {}, `watched by ${d.watchers.join(", ")}`) : null;
      if (d.controlledBy) {
        return [h("code", {}, d.controlledBy), d.user ? h("small", {}, `user ${d.user}`) : null, watching];
      }
      return [d.lease ? d.lease : "-", watching];
    }

    function actions(d) {
      const buttons = [];
      if (!d.configured) {
        if (ctx.may("admin")) {
          buttons.push(
            h("button", { type: "button", className: "danger", dataset: { key: `forget:${d.name}` }, onclick: (e) => forget(e.currentTarget, d.name) }, "Forget"),
          );
        }
        return buttons;
      }
      if (d.link === "live" && ctx.may("helpdesk")) {
        buttons.push(
          h("button", { type: "button", className: "secondary", dataset: { key: `view:${d.name}` }, onclick: (e) => openViewer(e.currentTarget, d.name, "view", d.controlledBy) }, "Shadow"),
        );
      }
      if (d.link === "live" && ctx.may("admin")) {
        buttons.push(
          h("button", { type: "button", className: "contrast", dataset: { key: `control:${d.name}` }, onclick: (e) => openViewer(e.currentTarget, d.name, "control", d.controlledBy) }, "Take over"),
        );
      }
      if (ctx.may("admin") && d.backend !== "vnc") {
        for (const [verb, label] of [["start", "Start"], ["stop", "Stop"], ["reset", "Reset"]]) {
          buttons.push(
            h(
              "button",
              { type: "button", className: "secondary", dataset: { key: `${verb}:${d.name}` }, onclick: (e) => lifecycle(e.currentTarget, d.name, verb) },
              label,
            ),
          );
        }
      }
      return buttons;
    }

    async function lifecycle(button, name, verb) {
      if (verb === "reset") {
        const sure = await confirmDialog(
          `Reset ${name}?`,
          "It is stopped, and starts from its template (a fresh session) next time: what was on it is lost.",
          "Reset",
        );
        if (!sure) {
          return;
        }
      }
      await act(button, () => post(`desktops/${path(name)}/${verb}`, {}), (a) => `${name}: now ${a.desktop?.state ?? "-"}`);
      view.refresh();
    }

    async function forget(button, name) {
      const sure = await confirmDialog(
        `Forget ${name}?`,
        "Its record, its pairings and its users' ownership are removed from the database.",
        "Forget",
      );
      if (sure) {
        await act(button, () => del(`desktops/${path(name)}`), `Forgot ${name}`);
        view.refresh();
      }
    }

    const view = liveView(listing, load, render);
    return { refresh: view.refresh, changed: view.soon, stop: view.stop };
  },
};
