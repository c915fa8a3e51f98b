// The server's live events (/api/v1/events, Server-Sent Events).
//
// `event: changed` carries {"revision": n, "thumbnails": {"desktop/NAME": v,
// "terminal/ID": v}}: something the lists show changed (the revision grew),
// or a thumbnail got a new version.  The browser's EventSource reconnects by itself after a
// dropped connection; when the server refused the stream outright (logged
// out, too many watchers) it stops, and this class opens a new one after a
// growing delay.  Each (re)connection counts as a change: what happened while
// the stream was away is fetched again.

import { API } from "./api.js";

const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30000;

export class Events {
  constructor(onChanged, onState) {
    this.onChanged = onChanged;
    this.onState = onState;
    this.source = null;
    this.retryMs = RETRY_FIRST_MS;
    this.timer = null;
    this.lost = false;
  }

  start() {
    this.stop();
    this.onState("connecting");
    const source = new EventSource(`${API}/events`);
    this.source = source;
    source.addEventListener("open", () => {
      this.retryMs = RETRY_FIRST_MS;
      this.onState("live");
      if (this.lost) {
        this.lost = false;
        this.onChanged({ reconnected: true });
      }
    });
    source.addEventListener("changed", (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return; // not ours to guess at; the next event will do
      }
      this.onChanged(data);
    });
    source.addEventListener("error", () => {
      this.lost = true;
      this.onState("lost");
      if (source.readyState === EventSource.CLOSED) {
        this.retryLater();
      }
    });
  }

  retryLater() {
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => this.start(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
  }

  stop() {
    window.clearTimeout(this.timer);
    if (this.source !== null) {
      this.source.close();
      this.source = null;
    }
  }
}
