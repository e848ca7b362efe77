// Live updates: the page is server-rendered; when the event stream says something changed,
// fetch the same URL again and swap its <main> in. No reload, no framework.
(() => {
  "use strict";
  const live = document.getElementById("live");
  if (!window.EventSource || !window.fetch || !live) return;
  const address = document.body.dataset.address || null;
  let timer = null, busy = false, last = 0;

  async function refresh() {
    timer = null;
    if (busy) return schedule(1000);
    busy = true;
    last = Date.now();
    try {
      const response = await fetch(location.href, { cache: "no-store", headers: { "X-Quarry-Live": "1" } });
      if (response.ok) {
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.querySelector("main");
        const main = document.querySelector("main");
        if (fresh && main) {
          main.replaceChildren(...fresh.childNodes);
          document.title = page.title;
          document.dispatchEvent(new CustomEvent("quarry:updated"));
        }
      }
    } catch (_) {
      // The next event tries again.
    } finally {
      busy = false;
    }
  }

  // At most one refresh every 2 s, however fast events come (regtest finds blocks by the dozen).
  function schedule(ms) {
    if (!timer) timer = setTimeout(refresh, Math.max(0, ms, 2000 - (Date.now() - last)));
  }

  const events = new EventSource("/api/events");
  events.onopen = () => { live.textContent = "Live"; };
  events.onerror = () => { live.textContent = "Reconnecting to the live stream…"; };
  for (const name of ["BlockFound", "BlockConfirmed", "BlockOrphaned", "PayoutSent"]) {
    events.addEventListener(name, () => {
      schedule(300);
      // The block's row is written as it is submitted: look again once it has settled.
      setTimeout(() => schedule(0), 2500);
    });
  }
  events.addEventListener("ShareSubmitted", (event) => {
    if (address) {
      try { if (JSON.parse(event.data).address !== address) return; } catch (_) { return; }
    }
    // Shares come often: at most one refresh every 5 s for them.
    schedule(5000 - (Date.now() - last));
  });
  for (const name of ["MinerConnected", "MinerDisconnected"]) {
    events.addEventListener(name, () => schedule(1000));
  }
})();
