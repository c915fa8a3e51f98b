// The wall: a live thumbnail of every desktop and every connected terminal.
//
// Thumbnails come from /api/v1/thumbnails/{desktops,terminals}/NAME.jpg?v=V;
// the events stream says which version each picture has, and a tile loads
// its picture again only when that version changed.  Tiles are kept by key
// ("desktop/NAME", "terminal/ID") across updates, so pictures never flicker.
// A click opens the picture large, with what the role may do about it.

import { get, post } from "./api.js";
import { openViewer } from "./viewer-open.js";
import { act, badge, h, replace, showError } from "./ui.js";
import { showsText } from "./terminals.js";
import { throttled } from "./live.js";

export function thumbnailUrl(key, version) {
  const [kind, name] = splitKey(key);
  return `/api/v1/thumbnails/${kind}s/${encodeURIComponent(name)}.jpg?v=${version ?? 0}`;
}

function splitKey(key) {
  const slash = key.indexOf("/");
  return [key.slice(0, slash), key.slice(slash + 1)];
}

export default {
  title: "Wall",
  needs: "read",
  mount(root, ctx) {
    const desktopGrid = h("ul", { className: "wall", id: "wall-desktops", "aria-label": "Desktops" });
    const terminalGrid = h("ul", { className: "wall", id: "wall-terminals", "aria-label": "Terminals" });
    const noTerminals = h("p", { className: "empty", hidden: true }, "No terminal is connected.");
    root.append(
      h("h1", {}, "Wall"),
      h("section", {}, h("h2", {}, "Desktops"), desktopGrid),
      h("section", {}, h("h2", {}, "Terminals"), terminalGrid, noTerminals),
    );
    const tiles = new Map(); // key -> {item, img, caption, version, info}
    const big = new BigView(ctx);
    let busy = false;
    let again = false;
    let stopped = false;
    let lastRevision;

    function tile(key, label) {
      let t = tiles.get(key);
      if (t === undefined) {
        const img = h("img", { alt: `${label}: no picture yet`, decoding: "async" });
        const frame = h("span", { className: "picture" }, img);
        const caption = h("span", { className: "caption" });
        const button = h(
          "button",
          { type: "button", className: "tile", dataset: { key }, "aria-label": `${label}: open large` },
          frame,
          caption,
        );
        const item = h("li", { dataset: { key } }, button);
        t = { item, img, frame, caption, version: undefined, label, info: null };
        img.addEventListener("load", () => {
          frame.dataset.empty = "false";
          img.alt = label;
        });
        img.addEventListener("error", () => {
          frame.dataset.empty = "true";
        });
        button.addEventListener("click", () => big.open(key, t.label, t.info));
        tiles.set(key, t);
      }
      return t;
    }

    function showPicture(t, key) {
      const version = ctx.versions[key];
      if (t.version !== version || t.img.getAttribute("src") === null) {
        t.version = version;
        t.img.src = thumbnailUrl(key, version);
      }
    }

    function place(grid, entries) {
      const keys = new Set(entries.map(([key]) => key));
      for (const [key, t] of tiles) {
        if (t.item.parentNode === grid && !keys.has(key)) {
          t.item.remove();
          tiles.delete(key);
        }
      }
      for (const [key, label, info, caption] of entries) {
        const t = tile(key, label);
        t.info = info;
        replace(t.caption, caption);
        showPicture(t, key);
        grid.append(t.item); // keeps order: moves it to the end
      }
    }

    async function load() {
      const [desktops, terminals] = await Promise.all([get("desktops"), get("terminals")]);
      if (stopped) {
        return;
      }
      place(
        desktopGrid,
        desktops
          .filter((d) => d.configured)
          .map((d) => [`desktop/${d.name}`, `Desktop ${d.name}`, { kind: "desktop", desktop: d }, desktopCaption(d)]),
      );
      const connected = terminals.filter((t) => t.connected);
      place(
        terminalGrid,
        connected.map((t) => [`terminal/${t.id}`, `Terminal ${t.id}`, { kind: "terminal", terminal: t }, terminalCaption(t)]),
      );
      noTerminals.hidden = connected.length > 0;
      big.update(tiles);
    }

    async function refresh() {
      if (busy) {
        again = true;
        return;
      }
      busy = true;
      try {
        do {
          again = false;
          await load();
        } while (again && !stopped);
      } catch (error) {
        if (error.status !== 401) {
          showError(error);
        }
      } finally {
        busy = false;
      }
    }

    const refreshSoon = throttled(() => stopped || refresh());

    function changed(data) {
      for (const [key, t] of tiles) {
        showPicture(t, key);
      }
      big.update(tiles);
      if (data.reconnected || data.revision !== lastRevision) {
        lastRevision = data.revision;
        refreshSoon();
      }
    }

    refresh();
    return {
      changed,
      refresh,
      stop() {
        stopped = true;
        big.close();
      },
    };
  },
};

function desktopCaption(d) {
  const holder = d.controlled_by
    ? `${d.controlling_user ? `${d.controlling_user} at ` : ""}${d.controlled_by}`
    : d.lease
      ? d.lease
      : "free";
  return [
    h("strong", {}, d.name),
    " ",
    badge(d.state || "not configured", d.state),
    d.state === "failed" && d.detail ? h("small", { title: d.detail }, d.detail) : h("small", {}, holder),
  ];
}

function terminalCaption(t) {
  const code = t.pairing_code ? `, code ${t.pairing_code}` : "";
  return [h("strong", {}, t.name || t.id), h("small", {}, showsText(t.shows) + code)];
}

// The large view in a <dialog>: a terminal's exact snapshot, or a desktop's
// thumbnail, kept up to date while open.
class BigView {
  constructor(ctx) {
    this.ctx = ctx;
    this.key = null;
    this.version = undefined;
    this.img = h("img", { alt: "" });
    this.title = h("h2", { id: "big-title" });
    this.actions = h("footer", {});
    this.dialog = h(
      "dialog",
      { id: "big", "aria-labelledby": "big-title" },
      h(
        "article",
        {},
        h(
          "header",
          {},
          h("button", { type: "button", rel: "prev", "aria-label": "Close", onclick: () => this.close() }),
          this.title,
        ),
        h("figure", {}, this.img),
        this.actions,
      ),
    );
    this.dialog.addEventListener("close", () => {
      this.key = null;
    });
    document.body.append(this.dialog);
  }

  open(key, label, info) {
    this.key = key;
    this.version = null;
    this.title.textContent = label;
    this.img.alt = label;
    this.showActions(info);
    this.update();
    this.dialog.showModal();
  }

  update(tiles) {
    if (this.key === null) {
      return;
    }
    const version = this.ctx.versions[this.key];
    if (version === this.version) {
      return;
    }
    this.version = version;
    const [kind, name] = splitKey(this.key);
    this.img.src =
      kind === "terminal"
        ? `/api/v1/terminals/${encodeURIComponent(name)}/snapshot.png?v=${version ?? 0}`
        : thumbnailUrl(this.key, version);
    if (tiles && !tiles.has(this.key)) {
      this.close();
    }
  }

  showActions(info) {
    const ctx = this.ctx;
    const buttons = [];
    if (info && info.kind === "desktop") {
      const name = info.desktop.name;
      if (ctx.may("helpdesk")) {
        buttons.push(
          h("button", { type: "button", onclick: (e) => openViewer(e.currentTarget, name, "view", info.desktop.controlled_by) }, "Shadow (view only)"),
        );
      }
      if (ctx.may("admin")) {
        buttons.push(
          h("button", { type: "button", className: "contrast", onclick: (e) => openViewer(e.currentTarget, name, "control", info.desktop.controlled_by) }, "Take over"),
        );
      }
    } else if (info && info.kind === "terminal" && ctx.may("helpdesk")) {
      const id = info.terminal.id;
      buttons.push(
        h(
          "button",
          {
            type: "button",
            className: "danger",
            onclick: (e) => act(e.currentTarget, () => post("kick", { terminal: id }), `Kicked ${id}`).then(() => this.close()),
          },
          "Kick",
        ),
      );
    }
    replace(this.actions, buttons);
    this.actions.hidden = buttons.length === 0;
  }

  close() {
    if (this.dialog.open) {
      this.dialog.close();
    }
    this.key = null;
  }
}
