// Open the admin's own viewer of a desktop: POST /api/v1/viewers gives a
// single-use ticket (30 s) and the viewer page's URL with the ticket in its
// fragment; the page opens in a new tab (or this one, if popups are blocked).
//
// mode "view": pixels only (helpdesk shadow); mode "control": the admin's
// keys and pointer reach the desktop and its terminal is view-only until the
// viewer closes (take over).

import { post } from "./api.js";
import { act } from "./ui.js";

export async function openViewer(button, desktop, mode, terminal) {
  const answer = await act(button, () => post("viewers", { desktop, mode }));
  if (!answer) {
    return;
  }
  const url = new URL(answer.url, window.location.href);
  const fragment = new URLSearchParams(url.hash.slice(1));
  fragment.set("desktop", desktop);
  fragment.set("mode", mode);
  if (terminal) {
    fragment.set("terminal", terminal);
  }
  url.hash = fragment.toString();
  const tab = window.open(url.href, "_blank");
  if (tab === null) {
    window.location.assign(url.href);
  } else {
    tab.opener = null;
  }
}
