// A page region that shows fetched data and fetches it again on demand.
// Fetches never overlap: a change during a fetch means one more fetch after
// it.  The region is rebuilt only when what it shows changed, so a stream of
// events that change nothing here leaves tables (and the keyboard focus in
// them) alone.
//
// `refresh()` fetches now (after the admin's own action); `soon()` is for
// the event stream, which also reports every new thumbnail: it fetches at
// most once per EVENT_GAP_MS, the last change always included.

import { replace, showError } from "./ui.js";

export const EVENT_GAP_MS = 1000;

export function throttled(work, gapMs = EVENT_GAP_MS) {
  let last = 0;
  let timer = null;
  return function soon() {
    if (timer !== null) {
      return;
    }
    const wait = Math.max(0, last + gapMs - Date.now());
    timer = window.setTimeout(() => {
      timer = null;
      last = Date.now();
      work();
    }, wait);
  };
}

export function liveView(container, load, render) {
  let busy = null;
  let again = false;
  let stopped = false;
  let shown = null;

  async function once() {
    const data = await load();
    const key = JSON.stringify(data);
    if (!stopped && key !== shown) {
      shown = key;
      replace(container, render(data));
    }
  }

  function refresh() {
    if (busy !== null) {
      again = true;
      return busy;
    }
    busy = (async () => {
      try {
        do {
          again = false;
          await once();
        } while (again && !stopped);
      } catch (error) {
        if (error.status !== 401 && !stopped) {
          showError(error);
        }
      } finally {
        busy = null;
      }
    })();
    return busy;
  }

  // Draw again from the last data (e.g. after a local choice changed what is shown).
  function redraw() {
    shown = null;
    return refresh();
  }

  refresh();
  return { refresh, redraw, soon: throttled(() => stopped || refresh()), stop: () => (stopped = true) };
}
