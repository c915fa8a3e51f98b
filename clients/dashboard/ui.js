// Small DOM helpers shared by the pages: building elements, times, the
// message area, busy buttons, confirmation dialogs.  No inline styles or
// scripts anywhere (the page's Content-Security-Policy forbids them): looks
// come from pico.css and dashboard.css, behaviour from event listeners.

// h("button", {type: "button", onclick: f, dataset: {key: "x"}}, "Label")
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) {
      continue;
    }
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else if (name === "className") {
      node.className = value;
    } else if (value === true) {
      node.setAttribute(name, "");
    } else {
      node.setAttribute(name, String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) {
      continue;
    }
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// Replace a container's content, keeping keyboard focus on the element with
// the same data-key (a live update must not steal the admin's place).
export function replace(container, ...children) {
  const focused = document.activeElement;
  const key = focused && container.contains(focused) ? focused.dataset.key : undefined;
  container.replaceChildren();
  append(container, children);
  if (key) {
    const again = container.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) {
      again.focus();
    }
  }
}

const pad = (n) => String(n).padStart(2, "0");

// Seconds since the epoch as local "YYYY-MM-DD HH:MM:SS", like the CLI.
export function when(seconds) {
  if (!seconds) {
    return "-";
  }
  const d = new Date(seconds * 1000);
  const day = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return `${day} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 3600)}:${pad(Math.floor((s % 3600) / 60))}:${pad(s % 60)}`;
}

export function timeCell(seconds) {
  return h("time", seconds ? { datetime: new Date(seconds * 1000).toISOString() } : {}, when(seconds));
}

export function dash(value) {
  return value === null || value === undefined || value === "" ? "-" : value;
}

export function size(s) {
  return s ? `${s.width}×${s.height}` : "-";
}

// -- messages -------------------------------------------------------------------------------
let noticeTimer = null;

// Show an error (ApiError or any Error) in the message area, with its hint.
export function showError(error) {
  const hint = error && error.hint ? error.hint : "";
  showMessage("error", error && error.message ? error.message : String(error), hint);
}

export function showDone(text) {
  showMessage("done", text, "");
}

function showMessage(kind, text, hint) {
  const area = document.getElementById("notice");
  window.clearTimeout(noticeTimer);
  area.dataset.kind = kind;
  replace(
    area,
    h("p", {}, h("strong", {}, text)),
    hint ? h("p", { className: "hint" }, hint) : null,
    h("button", { type: "button", className: "secondary", onclick: hideMessage }, "Dismiss"),
  );
  area.hidden = false;
  if (kind === "done") {
    noticeTimer = window.setTimeout(hideMessage, 6000);
  }
}

export function hideMessage() {
  const area = document.getElementById("notice");
  area.hidden = true;
  area.replaceChildren();
}

// Run an action from a button: busy while it runs, its error shown, the
// page refreshed after.  Returns the answer, or undefined when it failed.
export async function act(button, work, done) {
  if (button) {
    button.setAttribute("aria-busy", "true");
    button.disabled = true;
  }
  try {
    const answer = await work();
    if (done) {
      showDone(typeof done === "function" ? done(answer) : done);
    }
    return answer;
  } catch (error) {
    showError(error);
    return undefined;
  } finally {
    if (button) {
      button.removeAttribute("aria-busy");
      button.disabled = false;
    }
  }
}

// A modal dialog holding a form; resolves with its FormData, or null when cancelled.
export function dialogForm(title, fields, submitLabel, { danger = false } = {}) {
  return new Promise((resolve) => {
    const form = h(
      "form",
      { method: "dialog" },
      fields,
      h(
        "footer",
        {},
        h("button", { type: "button", className: "secondary", value: "cancel", onclick: () => close(null) }, "Cancel"),
        h("button", { type: "submit", className: danger ? "danger" : "" }, submitLabel),
      ),
    );
    const dialog = h(
      "dialog",
      { "aria-labelledby": "dialog-title" },
      h("article", {}, h("header", {}, h("h2", { id: "dialog-title" }, title)), form),
    );
    let settled = false;
    function close(value) {
      if (!settled) {
        settled = true;
        resolve(value);
      }
      dialog.close();
      dialog.remove();
    }
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (form.reportValidity()) {
        close(new FormData(form));
      }
    });
    dialog.addEventListener("cancel", () => close(null));
    document.body.append(dialog);
    dialog.showModal();
    const first = form.querySelector("input, select, textarea");
    (first || form.querySelector("button[type=submit]")).focus();
  });
}

// Ask before something that cannot be undone.
export async function confirmDialog(title, text, label) {
  const answer = await dialogForm(title, [h("p", {}, text)], label, { danger: true });
  return answer !== null;
}

// A labelled input for forms: <label>Text <input ...></label>
export function field(label, attrs) {
  return h("label", {}, label, h("input", attrs));
}

export function choice(label, attrs, options) {
  return h(
    "label",
    {},
    label,
    h(
      "select",
      attrs,
      options.map(([value, text]) => h("option", { value }, text)),
    ),
  );
}

// A horizontally scrolling table with a caption (for narrow screens).
export function table(caption, headings, rows, empty) {
  if (rows.length === 0) {
    return h("p", { className: "empty" }, empty);
  }
  return h(
    "div",
    { className: "table-wrap" },
    h(
      "table",
      {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headings.map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, rows),
    ),
  );
}

// A state word with a colour (dashboard.css), e.g. running, failed, live.
export function badge(word, tone) {
  return h("span", { className: "badge", dataset: { tone: tone || word || "none" } }, dash(word));
}
