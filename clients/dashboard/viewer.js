// The admin's viewer of one desktop: noVNC over /api/v1/viewers/rfb.
//
// The dashboard asks POST /api/v1/viewers for a ticket (single use, 30 s)
// and opens this page with it in the URL fragment (never sent to the server
// with the page, never in a log): #ticket=T&desktop=NAME&mode=view|control
// [&terminal=ID].  The WebSocket carries the login cookie and the ticket.
//
// mode=view   a helpdesk shadow: pixels only, noVNC sends no input (and the
//             server would drop it anyway);
// mode=control  take over: the admin's keys and pointer reach the desktop,
//             and its terminal is view-only until this page closes.
//
// A ticket works once, so a dropped connection is not retried: the page
// says so, and the dashboard opens a new viewer.

import RFB from "./novnc/core/rfb.js";

const fragment = new URLSearchParams(window.location.hash.slice(1));
const ticket = fragment.get("ticket") || "";
const desktop = fragment.get("desktop") || "the desktop";
const mode = fragment.get("mode") === "control" ? "control" : "view";
const terminal = fragment.get("terminal") || "";

const screen = document.getElementById("screen");
const banner = document.getElementById("banner");
const statusLine = document.getElementById("viewer-status");
const closeButton = document.getElementById("viewer-close");

let rfb = null;

// The ticket is spent by connecting; keep it out of the history and the address bar.
fragment.delete("ticket");
window.history.replaceState(null, "", `${window.location.pathname}#${fragment}`);

function bannerText() {
  if (mode === "view") {
    return `View only — helpdesk shadow of ${desktop}`;
  }
  const who = terminal ? `terminal ${terminal} is` : "its terminal is";
  return `You control ${desktop}; ${who} view-only until you close this`;
}

function setState(state, text) {
  document.body.dataset.state = state;
  statusLine.textContent = text;
}

function socketUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  const query = new URLSearchParams({ ticket });
  return `${scheme}//${window.location.host}/api/v1/viewers/rfb?${query}`;
}

function connect() {
  if (!ticket) {
    setState("failed", "No viewer ticket: open the viewer from the dashboard.");
    return;
  }
  setState("connecting", "Connecting…");
  rfb = new RFB(screen, socketUrl(), { shared: true, wsProtocols: ["binary"] });
  rfb.viewOnly = mode === "view";
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.clipViewport = false;
  rfb.focusOnClick = mode === "control";
  rfb.showDotCursor = mode === "control";
  rfb.addEventListener("connect", () => {
    setState("connected", mode === "view" ? "Watching" : "Connected");
    if (mode === "control") {
      rfb.focus();
    }
  });
  rfb.addEventListener("disconnect", (event) => {
    rfb = null;
    const how = event.detail.clean ? "Closed" : "Connection lost";
    setState("disconnected", `${how}: open the viewer again from the dashboard.`);
  });
  rfb.addEventListener("securityfailure", (event) => {
    setState("failed", event.detail.reason || "The server refused this viewer.");
  });
  rfb.addEventListener("desktopname", (event) => {
    document.title = `${event.detail.name || desktop} · thinserve viewer`;
  });
}

function close() {
  if (rfb !== null) {
    rfb.disconnect();
  }
  // After this click's handling is over: the disconnect goes out first.
  window.setTimeout(() => {
    window.close();
    // Still here: this tab was not opened by the dashboard.
    window.setTimeout(() => window.location.assign("/"), 200);
  }, 0);
}

document.body.dataset.mode = mode;
document.title = `${desktop} · thinserve viewer`;
banner.textContent = bannerText();
closeButton.addEventListener("click", close);
window.addEventListener("pagehide", () => rfb?.disconnect());
connect();
