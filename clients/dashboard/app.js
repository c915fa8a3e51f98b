// thinserve admin dashboard: the one-page app.
//
// Hash routes (#/wall, #/terminals, ...) pick the page; every page shows
// what it fetched from /api/v1 and fetches it again whenever the server's
// event stream (/api/v1/events, Server-Sent Events) says something changed,
// so nothing needs a manual reload.  The session is the server's cookie; the
// CSRF token from the login (or /api/v1/session) goes with every change.

import { get, onUnauthenticated, post, setCsrf } from "./api.js";
import { Events } from "./events.js";
import { h, hideMessage, replace, showError } from "./ui.js";
import login from "./login.js";
import wall from "./wall.js";
import terminals from "./terminals.js";
import desktops from "./desktops.js";
import sessions from "./sessions.js";
import users from "./users.js";
import audit from "./audit.js";
import admins from "./admins.js";

// In menu order; `needs` is what the role must be allowed (helpdesk < admin).
const PAGES = { wall, terminals, desktops, sessions, users, audit, admins };
const DEFAULT_PAGE = "wall";
const RANK = { read: 0, helpdesk: 1, admin: 2 };

const main = document.getElementById("page");
const menu = document.getElementById("menu");
const who = document.getElementById("who");
const liveState = document.getElementById("live");

const ctx = {
  session: null, // {name, role, csrf, actor}
  versions: {}, // "desktop/NAME" | "terminal/ID" -> thumbnail version
  // What the role may do: "read", "helpdesk" (shadow, kick) or "admin" (everything).
  may(needs) {
    return this.session !== null && RANK[this.session.role] >= RANK[needs];
  },
  go(name) {
    window.location.hash = `#/${name}`;
  },
};

let current = null; // {name, view: {refresh, stop}}
const events = new Events(onChanged, showLive);

let lastRevision = null; // the server's revision of what the lists show

function onChanged(data) {
  if (data.thumbnails) {
    ctx.versions = data.thumbnails;
  }
  const listsChanged = data.reconnected || data.revision !== lastRevision;
  if (data.revision !== undefined) {
    lastRevision = data.revision;
  }
  if (current && current.view.changed) {
    current.view.changed(data);
  } else if (current && current.view.refresh && listsChanged) {
    current.view.refresh();
  }
}

function showLive(state) {
  liveState.dataset.state = state;
  liveState.textContent = { live: "Live", connecting: "Connecting…", lost: "Reconnecting…" }[state];
  liveState.title =
    state === "live" ? "Pages update by themselves" : "Live updates paused; pages refresh once back";
}

function pageName() {
  const name = window.location.hash.replace(/^#\/?/, "").split(/[/?]/)[0];
  return Object.hasOwn(PAGES, name) ? name : DEFAULT_PAGE;
}

function show(name, page) {
  if (current) {
    current.view.stop?.();
  }
  hideMessage();
  main.replaceChildren();
  main.dataset.page = name;
  document.title = `${page.title} · thinserve`;
  current = { name, view: page.mount(main, ctx) };
  for (const link of menu.querySelectorAll("a")) {
    if (link.dataset.page === name) {
      link.setAttribute("aria-current", "page");
    } else {
      link.removeAttribute("aria-current");
    }
  }
}

function route() {
  if (ctx.session === null) {
    showLogin();
    return;
  }
  const name = pageName();
  const page = PAGES[name];
  if (!ctx.may(page.needs)) {
    ctx.go(DEFAULT_PAGE);
    return;
  }
  show(name, page);
}

function buildMenu() {
  replace(
    menu,
    Object.entries(PAGES)
      .filter(([, page]) => ctx.may(page.needs))
      .map(([name, page]) =>
        h("li", {}, h("a", { href: `#/${name}`, dataset: { page: name } }, page.menu || page.title)),
      ),
  );
  replace(
    who,
    h("li", {}, liveState),
    h("li", {}, h("span", { id: "who-name" }, `${ctx.session.name} (${ctx.session.role})`)),
    h("li", {}, h("button", { type: "button", id: "logout", className: "secondary", onclick: logout }, "Log out")),
  );
  menu.hidden = false;
  who.hidden = false;
}

// Logged in (by the login page, or a session the cookie still holds).
function enter(session) {
  ctx.session = session;
  setCsrf(session.csrf);
  document.body.dataset.role = session.role;
  buildMenu();
  events.start();
  route();
}

function leave() {
  ctx.session = null;
  setCsrf("");
  events.stop();
  menu.hidden = true;
  who.hidden = true;
  delete document.body.dataset.role;
}

function showLogin(reason) {
  leave();
  show("login", {
    title: "Log in",
    mount: (root) => login.mount(root, { reason, enter }),
  });
}

async function logout() {
  try {
    await post("logout", {});
  } catch (error) {
    showError(error);
  }
  leave();
  window.location.hash = "";
  showLogin();
}

onUnauthenticated(() => {
  if (ctx.session !== null) {
    showLogin("Your session ended; log in again.");
  }
});

window.addEventListener("hashchange", route);

async function startApp() {
  showLive("connecting");
  try {
    enter(await get("session", { quietAuth: true }));
  } catch (error) {
    if (error.status !== 401) {
      showError(error);
    }
    showLogin();
  }
}

startApp();
