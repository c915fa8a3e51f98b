// Terminals: every terminal thinserve has seen (and any paired before it
// connected): how it is known, what it shows, its pairing.  Pair one by the
// code its pairing screen shows, or by choosing a desktop for it; unpair,
// kick, forget.

import { del, get, path, post } from "./api.js";
import { liveView } from "./live.js";
import { act, badge, choice, dash, dialogForm, confirmDialog, duration, h, showDone, size, table, timeCell } from "./ui.js";

const IDLE_SHOWN = 60; // seconds without a key or pointer event before "idle" shows

const IDENTITY = {
  key: ["key", "Proved by the terminal's own key"],
  address: ["address", "Known by its network address (trusted subnet)"],
  connection: ["this connection", "A keyless terminal, known only for this connection"],
  claimed: ["claimed id", "An id from before terminal keys; no connection can prove it"],
};

// What a terminal is shown, in the CLI's words.
export function showsText(shows) {
  if (!shows) {
    return "-";
  }
  if (shows.kind === "desktop") {
    return `${shows.desktop} (${shows.control ? "control" : "view-only"})`;
  }
  const screen = `${shows.kind} screen`;
  return shows.desktop ? `${screen} (${shows.desktop})` : screen;
}

// Desktops a terminal may be paired with: configured, in no pool, owned by no user.
export function pairable(desktops) {
  return desktops.filter((d) => d.configured && !d.pool && !d.owner).map((d) => d.name);
}

export default {
  title: "Terminals",
  needs: "read",
  mount(root, ctx) {
    const listing = h("div", { id: "terminals-table" });
    const codeForm = ctx.may("admin") ? pairByCodeForm(() => view.refresh()) : null;
    root.append(h("h1", {}, "Terminals"), codeForm ? codeForm.node : null, listing);
    let desktops = [];

    async function load() {
      const [terminals, allDesktops] = await Promise.all([get("terminals"), get("desktops")]);
      desktops = pairable(allDesktops);
      codeForm?.setDesktops(desktops);
      return { terminals: terminals.map(row), desktops };
    }

    function row(t) {
      return {
        id: t.id,
        name: t.name,
        identity: t.identity || "",
        address: t.address,
        model: t.model,
        screen: t.screen,
        connected: t.connected,
        shows: showsText(t.shows),
        code: t.pairing_code,
        paired: t.paired_desktop,
        user: t.user,
        lastSeen: t.last_seen,
        idle: t.session ? t.session.idle_for : null,
      };
    }

    function render(data) {
      return table(
        "Every terminal seen, and terminals paired before they ever connected",
        ["Terminal", "Identity", "Address", "Model", "Screen", "Shows", "Paired with", "User", "Last seen", "Actions"],
        data.terminals.map((t) =>
          h(
            "tr",
            { dataset: { terminal: t.id } },
            h("th", { scope: "row" }, h("code", {}, t.id), t.name ? h("small", {}, t.name) : null),
            h("td", { title: (IDENTITY[t.identity] || ["", ""])[1] }, (IDENTITY[t.identity] || [t.identity])[0]),
            h("td", {}, dash(t.address)),
            h("td", {}, dash(t.model)),
            h("td", {}, size(t.screen)),
            h(
              "td",
              {},
              t.connected ? t.shows : badge("offline", "none"),
              t.code ? h("small", {}, "code ", h("strong", { className: "code" }, t.code)) : null,
            ),
            h("td", {}, dash(t.paired)),
            h("td", {}, dash(t.user)),
            h(
              "td",
              {},
              t.connected ? "now" : timeCell(t.lastSeen),
              t.connected && t.idle >= IDLE_SHOWN ? h("small", {}, `idle ${duration(t.idle)}`) : null,
            ),
            h("td", { className: "actions" }, actions(t)),
          ),
        ),
        "No terminal has connected yet.",
      );
    }

    function actions(t) {
      const buttons = [];
      if (ctx.may("admin")) {
        buttons.push(
          h("button", { type: "button", dataset: { key: `pair:${t.id}` }, onclick: (e) => pairDialog(e.currentTarget, t) }, "Pair…"),
        );
        if (t.paired) {
          buttons.push(
            h(
              "button",
              {
                type: "button",
                className: "secondary",
                dataset: { key: `unpair:${t.id}` },
                onclick: (e) => act(e.currentTarget, () => post("unpair", { terminal: t.id }), `Unpaired ${t.id}`).then(view.refresh),
              },
              "Unpair",
            ),
          );
        }
      }
      if (t.connected && ctx.may("helpdesk")) {
        buttons.push(
          h(
            "button",
            {
              type: "button",
              className: "danger",
              dataset: { key: `kick:${t.id}` },
              onclick: (e) => act(e.currentTarget, () => post("kick", { terminal: t.id }), `Kicked ${t.id}`).then(view.refresh),
            },
            "Kick",
          ),
        );
      }
      if (!t.connected && ctx.may("admin")) {
        buttons.push(
          h("button", { type: "button", className: "danger", dataset: { key: `forget:${t.id}` }, onclick: (e) => forget(e.currentTarget, t) }, "Forget"),
        );
      }
      return buttons;
    }

    async function pairDialog(button, t) {
      if (desktops.length === 0) {
        showDone("No desktop can be paired: every desktop belongs to a pool or a user.");
        return;
      }
      const fields = [
        h("p", {}, "From now on ", h("code", {}, t.id), " shows the desktop chosen, in control, whenever it connects."),
        choice("Desktop", { name: "desktop", required: true }, desktops.map((d) => [d, d])),
      ];
      if (t.identity === "address" || t.identity === "connection") {
        fields.push(
          h(
            "label",
            {},
            h("input", { type: "checkbox", name: "by_address", role: "switch", required: t.identity === "address" }),
            ` Trust its address ${t.address || ""}: anything at that address gets the desktop`,
          ),
        );
      }
      const form = await dialogForm(`Pair ${t.id}`, fields, "Pair");
      if (form === null) {
        return;
      }
      const body = { terminal: t.id, desktop: form.get("desktop") };
      if (form.get("by_address")) {
        body.by_address = true;
      }
      await act(button, () => post("pair", body), (answer) => `Paired ${t.id} with ${body.desktop}; it shows ${showsText(answer.terminal?.shows)}`);
      view.refresh();
    }

    async function forget(button, t) {
      const sure = await confirmDialog(
        `Forget ${t.id}?`,
        "Its record and pairing are removed; if it connects again it starts as a new terminal.",
        "Forget",
      );
      if (sure) {
        await act(button, () => del(`terminals/${path(t.id)}`), `Forgot ${t.id}`);
        view.refresh();
      }
    }

    const view = liveView(listing, load, render);
    return { refresh: view.refresh, changed: view.soon, stop: view.stop };
  },
};

// "Pair by code": the code the terminal's screen shows, and a desktop for it.
function pairByCodeForm(after) {
  const code = h("input", {
    id: "pair-code",
    name: "code",
    required: true,
    autocomplete: "off",
    autocapitalize: "characters",
    spellcheck: "false",
    placeholder: "K7D-Q2M",
    "aria-describedby": "pair-code-help",
  });
  const desktop = h("select", { id: "pair-desktop", name: "desktop", required: true });
  const byAddress = h("input", { id: "pair-by-address", name: "by_address", type: "checkbox", role: "switch" });
  const submit = h("button", { type: "submit" }, "Pair");
  const form = h(
    "form",
    { id: "pair-by-code", className: "inline", "aria-labelledby": "pair-by-code-title" },
    h("h2", { id: "pair-by-code-title" }, "Pair by code"),
    h(
      "fieldset",
      { className: "row" },
      h("label", { for: "pair-code" }, "Code on the terminal's screen", code),
      h("label", { for: "pair-desktop" }, "Desktop", desktop),
      submit,
    ),
    h("label", { for: "pair-by-address" }, byAddress, " Pair its address (for a terminal without a key, on a network you trust)"),
    h("small", { id: "pair-code-help" }, "Codes work in either case, with or without spaces and dashes; they are single use and expire."),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { code: code.value.trim(), desktop: desktop.value };
    if (byAddress.checked) {
      body.by_address = true;
    }
    const answer = await act(submit, () => post("pair-code", body), (a) =>
      a.terminal ? `Paired ${a.terminal.id} with ${body.desktop}; it shows ${showsText(a.terminal.shows)}` : `Paired with ${body.desktop}`,
    );
    if (answer) {
      code.value = "";
    }
    after();
  });
  return {
    node: h("section", {}, form),
    setDesktops(names) {
      const chosen = desktop.value;
      const same = [...desktop.options].map((o) => o.value).join("\n") === names.join("\n");
      if (!same) {
        desktop.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
        if (names.includes(chosen)) {
          desktop.value = chosen;
        }
      }
      submit.disabled = names.length === 0;
    },
  };
}
