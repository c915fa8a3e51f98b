// thinserve browser terminal: noVNC's RFB client, full window, over the
// WebSocket endpoint served next to this page.
//
// The page opens the WebSocket itself: when it can keep a key (key.js), it
// offers the thinserve-key.v1 subprotocol, proves the key, and only then
// hands the open socket to noVNC.  Otherwise it connects keyless ("binary").
//
// Settings come from the query string:
//   resize=scale   fit the desktop into the window locally (default)
//   resize=remote  ask the server to give this terminal the window's size
//   resize=off     show the desktop 1:1, scrolling when it is larger
//   view_only=1    send no keyboard or mouse input
//   reconnect=0    do not reconnect after the connection drops
//   quality=0..9, compression=0..9   hints for JPEG quality and compression
//
// Several nodes: once connected, the page asks its node for the site's
// browser terminals (/nodes.json).  When its node stops answering (the
// connection dropped and one more try failed) it goes to the next node's
// page, with the same settings.

import RFB from "./novnc/core/rfb.js";
import { KEY_PROTOCOL, keyProof, keyUnavailable, loadKey } from "./key.js";

const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30000;

const params = new URLSearchParams(window.location.search);
const settings = {
  resize: params.get("resize") || "scale",
  viewOnly: params.get("view_only") === "1",
  reconnect: params.get("reconnect") !== "0",
  quality: levelParam("quality", 6),
  compression: levelParam("compression", 2),
};

const screen = document.getElementById("screen");
const statusLine = document.getElementById("status");
const login = document.getElementById("login");
const usernameInput = document.getElementById("username");
const passwordInput = document.getElementById("password");
const terminalIdLine = document.getElementById("terminal-id");

let rfb = null;
let retryMs = RETRY_FIRST_MS;
let retryTimer = null;
let lastFailure = "";
let keyless = "";  // why this page connects without a key; "" when it has one
let elsewhere = false;  // another tab of this browser took the terminal over
let siteNodes = [];  // the site's browser-terminal URLs, from /nodes.json
let failedTries = 0;  // connections that failed since the last one that worked
const terminalKey = prepareKey();

// Tabs of one browser share one key, so they are one terminal, and the
// server keeps the newest connection.  The tab that connects tells the
// others, which then stay disconnected instead of taking it back.
const tabs = "BroadcastChannel" in window ? new BroadcastChannel("thinserve-terminal") : null;
if (tabs !== null) {
  tabs.onmessage = (event) => {
    if (event.data === "connecting" && !keyless) {
      elsewhere = true;
      window.clearTimeout(retryTimer);
    }
  };
}

function levelParam(name, fallback) {
  const value = Number.parseInt(params.get(name) ?? "", 10);
  return Number.isInteger(value) && value >= 0 && value <= 9 ? value : fallback;
}

function websocketUrl() {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}/websockify`;
}

function setStatus(state, text) {
  document.body.dataset.state = state;
  statusLine.textContent = keyless ? `${text} (no terminal key: ${keyless})` : text;
}

async function prepareKey() {
  keyless = keyUnavailable();
  if (keyless) {
    return null;
  }
  try {
    const key = await loadKey();
    terminalIdLine.textContent = key.id;
    terminalIdLine.title = "This terminal's id: give it to the administrator to pair it";
    return key;
  } catch (error) {
    keyless = `the key could not be loaded (${error?.message || error})`;
    return null;
  }
}

function applySettings(client) {
  client.scaleViewport = settings.resize === "scale";
  client.resizeSession = settings.resize === "remote";
  client.clipViewport = false;
  client.viewOnly = settings.viewOnly;
  client.qualityLevel = settings.quality;
  client.compressionLevel = settings.compression;
  client.focusOnClick = true;
}

async function connect() {
  retryTimer = null;
  lastFailure = "";
  elsewhere = false;
  const key = await terminalKey;
  if (key !== null && tabs !== null) {
    tabs.postMessage("connecting");
  }
  const url = websocketUrl();
  setStatus("connecting", `Connecting to ${url}…`);
  const ws = new WebSocket(url, key ? [KEY_PROTOCOL, "binary"] : ["binary"]);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    if (ws.protocol !== KEY_PROTOCOL) {
      startRFB(ws);
    }
  };
  ws.onmessage = (event) => {
    ws.onmessage = null;
    proveKey(ws, key, event.data);
  };
  ws.onclose = (event) => {
    if (event.code === 1008) {
      lastFailure = event.reason || "the server refused this terminal's key";
    }
    disconnected(event.wasClean ? "connection closed" : "connection lost");
  };
}

async function proveKey(ws, key, nonce) {
  let proof;
  try {
    proof = await keyProof(key, nonce);
  } catch (error) {
    lastFailure = `could not prove this terminal's key: ${error?.message || error}`;
    ws.close();
    return;
  }
  if (ws.readyState !== WebSocket.OPEN) {
    return;  // closed meanwhile: its onclose reports it
  }
  ws.send(proof);
  // noVNC takes the socket over in this same task, so the server's first RFB
  // bytes, which can only come after the proof, reach noVNC's receive queue.
  startRFB(ws);
}

function startRFB(ws) {
  rfb = new RFB(screen, ws, { shared: true });
  applySettings(rfb);
  rfb.addEventListener("connect", onConnect);
  rfb.addEventListener("disconnect", onDisconnect);
  rfb.addEventListener("credentialsrequired", onCredentialsRequired);
  rfb.addEventListener("securityfailure", onSecurityFailure);
  rfb.addEventListener("desktopname", onDesktopName);
}

async function learnNodes() {
  try {
    const answer = await fetch("nodes.json", { cache: "no-store" });
    if (answer.ok) {
      const nodes = (await answer.json()).nodes;
      siteNodes = Array.isArray(nodes) ? nodes.filter((u) => /^https?:\/\//.test(u)) : [];
    }
  } catch (error) {
    // one node, or an older server: reconnect here only
  }
}

function originOf(url) {
  try {
    return new URL(url).origin;
  } catch (error) {
    return null;
  }
}

// The node after this one in the site's sorted list (every page walks the
// same ring), with this page's settings; null when there is no other node.
function nextNode() {
  const sorted = [...new Set(siteNodes)].filter((url) => originOf(url) !== null).sort();
  const here = sorted.findIndex((url) => originOf(url) === window.location.origin);
  const others = sorted.filter((url) => originOf(url) !== window.location.origin);
  if (others.length === 0) {
    return null;
  }
  const next = here < 0 ? others[0] : sorted[(here + 1) % sorted.length];
  return next + window.location.search;
}

function onConnect() {
  retryMs = RETRY_FIRST_MS;
  failedTries = 0;
  learnNodes();
  login.hidden = true;
  setStatus("connected", `Connected${document.title ? ` to ${document.title}` : ""}`);
  rfb.focus();
}

function onDesktopName(event) {
  document.title = event.detail.name || "thinserve";
  if (document.body.dataset.state === "connected") {
    setStatus("connected", `Connected to ${document.title}`);
  }
}

function onCredentialsRequired(event) {
  const types = event.detail.types || [];
  usernameInput.hidden = !types.includes("username");
  login.hidden = false;
  setStatus("login", "The server asks for a password");
  (usernameInput.hidden ? passwordInput : usernameInput).focus();
}

function onSecurityFailure(event) {
  lastFailure = event.detail.reason || `security failure (status ${event.detail.status})`;
}

function onDisconnect(event) {
  rfb = null;
  disconnected(event.detail.clean ? "connection closed" : "connection lost");
}

function disconnected(reason) {
  const why = lastFailure || reason;
  if (elsewhere) {
    setStatus("elsewhere", "This terminal is open in another tab or window. Reload to use it here.");
    return;
  }
  if (!settings.reconnect) {
    setStatus("disconnected", `Disconnected: ${why}. Reload the page to connect again.`);
    return;
  }
  failedTries += 1;
  const next = failedTries > 1 && !lastFailure ? nextNode() : null;
  if (next !== null) {
    setStatus("moving", `Disconnected: ${why}. Going to the next node, ${next}…`);
    window.location.assign(next);
    return;
  }
  const seconds = Math.round(retryMs / 1000);
  setStatus(lastFailure ? "failed" : "disconnected",
    `Disconnected: ${why}. Reconnecting in ${seconds} s…`);
  retryTimer = window.setTimeout(connect, retryMs);
  retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
}

login.addEventListener("submit", (event) => {
  event.preventDefault();
  if (rfb === null) {
    return;
  }
  const credentials = { password: passwordInput.value };
  if (!usernameInput.hidden) {
    credentials.username = usernameInput.value;
  }
  passwordInput.value = "";
  login.hidden = true;
  setStatus("connecting", "Checking credentials…");
  rfb.sendCredentials(credentials);
});

window.addEventListener("online", () => {
  if (retryTimer !== null) {
    window.clearTimeout(retryTimer);
    connect();
  }
});

connect();
