// Sessions: who controls which desktop from which terminal now (with Kick,
// Shadow and Take over), and who did before (newest first).

import { get, post } from "./api.js";
import { liveView } from "./live.js";
import { openViewer } from "./viewer-open.js";
import { act, dash, duration, h, table, timeCell } from "./ui.js";

const PAGE = 50;

export default {
  title: "Sessions",
  needs: "read",
  mount(root, ctx) {
    const listing = h("section", { id: "sessions" });
    const older = h("button", { type: "button", className: "secondary", id: "sessions-more" }, "Older sessions");
    const newest = h("button", { type: "button", className: "secondary", id: "sessions-newest" }, "Newest sessions");
    root.append(h("h1", {}, "Sessions"), listing, h("p", {}, newest, " ", older));
    let before = null; // null: the newest page; else the history before this session id
    let last = null; // the oldest session id shown
    older.addEventListener("click", () => {
      before = last;
      view.refresh();
    });
    newest.addEventListener("click", () => {
      before = null;
      view.refresh();
    });

    async function load() {
      const query = new URLSearchParams({ limit: String(PAGE) });
      if (before !== null) {
        query.set("before", String(before));
      }
      const [rows, terminals] = await Promise.all([get(`sessions?${query}`), get("terminals")]);
      last = rows.length ? rows[rows.length - 1].id : null;
      older.hidden = rows.length < PAGE;
      newest.hidden = before === null;
      // Who is in control now comes from the terminals themselves, however old
      // their session is; the history pages never hide one.
      const running = terminals
        .filter((t) => t.connected && t.shows && t.shows.kind === "desktop" && t.shows.control)
        .map((t) => ({
          id: t.id,
          terminal: t.id,
          desktop: t.shows.desktop,
          user: t.user,
          connected: t.session ? t.session.connected_for : null,
          idle: t.session ? t.session.idle_for : null,
        }));
      return { running, ended: rows.filter((s) => s.ended !== null) };
    }

    function render(data) {
      return [
        h("h2", {}, "Now"),
        table(
          "",
          ["Terminal", "Desktop", "User", "Connected for", "Idle for", "Actions"],
          data.running.map((s) =>
            h(
              "tr",
              { dataset: { terminal: s.terminal, desktop: s.desktop } },
              h("th", { scope: "row" }, h("code", {}, s.terminal)),
              h("td", {}, s.desktop),
              h("td", {}, dash(s.user)),
              h("td", {}, s.connected === null ? "-" : duration(s.connected)),
              h("td", {}, s.idle === null ? "-" : duration(s.idle)),
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
