// Sessions: who controls which desktop from which terminal now (with Kick,
// Shadow and Take over), and who did before (newest first).

import { get, post } from "./api.js";
import { liveView } from "./live.js";
import { openViewer } from "./viewer-open.js";
import { act, dash, duration, h, table, timeCell } from "./ui.js";

const PAGE = 50;
const MOST = 1000;

export default {
  title: "Sessions",
  needs: "read",
  mount(root, ctx) {
    const listing = h("section", { id: "sessions" });
    const more = h("button", { type: "button", className: "secondary", id: "sessions-more" }, "Show older sessions");
    root.append(h("h1", {}, "Sessions"), listing, more);
    let limit = PAGE;
    more.addEventListener("click", () => {
      limit = Math.min(MOST, limit + PAGE);
      view.refresh();
    });

    async function load() {
      const [rows, terminals] = await Promise.all([get(`sessions?limit=${limit}`), get("terminals")]);
      const connected = new Set(terminals.filter((t) => t.connected).map((t) => t.id));
      more.hidden = rows.length < limit || limit >= MOST;
      return {
        running: rows.filter((s) => s.ended === null && connected.has(s.terminal)),
        ended: rows.filter((s) => s.ended !== null),
      };
    }

    function render(data) {
      return [
        h("h2", {}, "Now"),
        table(
          "",
          ["Terminal", "Desktop", "User", "Started", "Actions"],
          data.running.map((s) =>
            h(
              "tr",
              { dataset: { session: s.id, terminal: s.terminal, desktop: s.desktop } },
              h("th", { scope: "row" }, h("code", {}, s.terminal)),
              h("td", {}, s.desktop),
              h("td", {}, dash(s.user)),
              h("td", {}, timeCell(s.started)),
              h("td", { className: "actions" }, actions(s)),
            ),
          ),
          "Nobody is using a desktop now.",
        ),
        h("h2", {}, "History"),
        table(
          "",
          ["#", "Terminal", "Desktop", "User", "Started", "Ended", "Duration"],
          data.ended.map((s) =>
            h(
              "tr",
              {},
              h("td", {}, s.id),
              h("td", {}, h("code", {}, s.terminal)),
              h("td", {}, s.desktop),
              h("td", {}, dash(s.user)),
              h("td", {}, timeCell(s.started)),
              h("td", {}, timeCell(s.ended)),
              h("td", {}, duration(s.ended - s.started)),
            ),
          ),
          "No session has ended yet.",
        ),
      ];
    }

    function actions(s) {
      const buttons = [];
      if (ctx.may("helpdesk")) {
        buttons.push(
          h(
            "button",
            {
              type: "button",
              className: "secondary",
              dataset: { key: `view:${s.id}` },
              onclick: (e) => openViewer(e.currentTarget, s.desktop, "view", s.terminal),
            },
            "Shadow",
          ),
        );
      }
      if (ctx.may("admin")) {
        buttons.push(
          h(
            "button",
            {
              type: "button",
              className: "contrast",
              dataset: { key: `control:${s.id}` },
              onclick: (e) => openViewer(e.currentTarget, s.desktop, "control", s.terminal),
            },
            "Take over",
          ),
        );
      }
      if (ctx.may("helpdesk")) {
        buttons.push(
          h(
            "button",
            {
              type: "button",
              className: "danger",
              dataset: { key: `kick:${s.id}` },
              onclick: (e) => act(e.currentTarget, () => post("kick", { terminal: s.terminal }), `Kicked ${s.terminal}`).then(view.refresh),
            },
            "Kick",
          ),
        );
      }
      return buttons;
    }

    const view = liveView(listing, load, render);
    return { refresh: view.refresh, changed: view.soon, stop: view.stop };
  },
};
