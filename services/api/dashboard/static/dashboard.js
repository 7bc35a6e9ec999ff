/* autosched dashboard: token, live updates, relative times, copy buttons.
 *
 * Live updates: <body data-poll> names the page's JSON API route and <body data-partial> the
 * page's live regions (?partial=1). Every data-interval ms the script GETs the JSON (with the
 * saved token as "Authorization: Bearer"); when the answer differs from the last one it
 * hands the data to the page's hook (the job page redraws its curve) and swaps in freshly
 * rendered regions ([data-live="..."]). Nothing else is fetched; no page reload.
 */
(function () {
  "use strict";

  const TOKEN_KEY = "autosched.token";
  const autosched = (window.autosched = window.autosched || {});
  // Page hooks, set by page scripts before DOMContentLoaded:
  //   onData(json) -> false to stop polling (e.g. the job ended); afterSwap().
  autosched.hooks = autosched.hooks || {};
  // The server's states (job, trial, worker; autosched.vocabulary.as_json()), embedded in every
  // page as JSON data by base.html: the scripts read them here, never a copy of their own.
  const vocabulary = document.getElementById("autosched-vocabulary");
  autosched.vocabulary = vocabulary ? JSON.parse(vocabulary.textContent) : {};

  function token() {
    try {
      return localStorage.getItem(TOKEN_KEY) || "";
    } catch (e) {
      return "";
    }
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra || {});
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    return headers;
  }

  /* The server's message of a failed response ({"detail": ...} JSON, else the status). */
  async function errorMessage(res) {
    let detail = "";
    try {
      const body = await res.clone().json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (e) {
      detail = (await res.text()).slice(0, 200);
    }
    return res.status + " " + (res.statusText || "") + (detail ? ": " + detail : "");
  }

  async function request(url, options) {
    const opts = Object.assign({ cache: "no-store" }, options || {});
    opts.headers = authHeaders(opts.headers);
    return fetch(url, opts);
  }

  function banner(message) {
    const el = document.getElementById("banner");
    if (!el) return;
    el.textContent = message || "";
    el.hidden = !message;
  }

  function liveState(state, text) {
    const el = document.getElementById("live-state");
    if (!el) return;
    el.classList.toggle("on", state === "on");
    el.classList.toggle("err", state === "err");
    document.getElementById("live-text").textContent = text;
  }

  /* ---- token form ---- */
  function initToken() {
    const form = document.getElementById("token-form");
    if (!form) return;
    const input = document.getElementById("token-input");
    const forget = document.getElementById("token-forget");
    const state = document.getElementById("token-state");
    function show() {
      const t = token();
      state.textContent = t ? "token " + t.slice(0, 6) + "…" : "no token";
      forget.hidden = !t;
      input.value = "";
      input.placeholder = t ? "replace token" : "API token (as_…)";
    }
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      localStorage.setItem(TOKEN_KEY, value);
      show();
      poller.now();
    });
    forget.addEventListener("click", function () {
      localStorage.removeItem(TOKEN_KEY);
      show();
      poller.now();
    });
    show();
  }

  /* ---- relative times: <time datetime=... data-rel> ---- */
  function age(seconds) {
    if (seconds < 0) seconds = 0;
    if (seconds < 60) return Math.floor(seconds) + " s ago";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min ago";
    return Math.floor(seconds / 86400) + " d ago";
  }

  function updateTimes(root) {
    const now = Date.now();
    (root || document).querySelectorAll("time[data-rel]").forEach(function (el) {
      const when = Date.parse(el.getAttribute("datetime"));
      if (isNaN(when)) return;
      if (!el.title) el.title = new Date(when).toLocaleString();
      el.textContent = age((now - when) / 1000);
    });
  }

  /* ---- copy buttons: data-copy="text" or data-copy-from="#selector" ---- */
  async function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      try {
        await navigator.clipboard.writeText(text);
        return true;
      } catch (e) {
        /* fall through to the old way */
      }
    }
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (e) {
      ok = false;
    }
    area.remove();
    return ok;
  }

  document.addEventListener("click", async function (ev) {
    const button = ev.target.closest("button.copy");
    if (!button) return;
    ev.preventDefault(); // a copy button inside <summary> must not toggle the <details>
    let text = button.dataset.copy;
    if (text === undefined && button.dataset.copyFrom) {
      const source = document.querySelector(button.dataset.copyFrom);
      text = source ? source.textContent : "";
    }
    const ok = await copyText(text || "");
    const label = button.textContent;
    button.textContent = ok ? "Copied" : "Copy failed";
    button.classList.toggle("copied", ok);
    setTimeout(function () {
      button.textContent = label;
      button.classList.remove("copied");
    }, 1200);
  });

  /* ---- text filter (schedules page): <input id="filter"> over [data-filter] ---- */
  function applyFilter() {
    const input = document.getElementById("filter");
    if (!input) return;
    const words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    document.querySelectorAll("[data-filter]").forEach(function (el) {
      const hay = el.getAttribute("data-filter").toLowerCase();
      el.hidden = !words.every(function (w) {
        return hay.includes(w);
      });
    });
  }

  /* ---- live regions ---- */
  function swapRegions(html) {
    const fresh = new DOMParser().parseFromString(html, "text/html");
    fresh.querySelectorAll("[data-live]").forEach(function (region) {
      const name = region.getAttribute("data-live");
      const old = document.querySelector('[data-live="' + name + '"]');
      if (!old) return;
      // Keep what the reader opened or closed (error details, traces) across the swap.
      old.querySelectorAll("details[id]").forEach(function (d) {
        const twin = region.querySelector('details[id="' + d.id + '"]');
        if (twin) twin.open = d.open;
      });
      const adopted = document.importNode(region, true);
      old.replaceWith(adopted);
      updateTimes(adopted);
    });
    applyFilter();
    if (autosched.hooks.afterSwap) autosched.hooks.afterSwap();
  }

  const poller = {
    timer: null,
    last: null,
    stopped: false,
    busy: false,

    start() {
      this.poll = document.body.dataset.poll;
      this.partial = document.body.dataset.partial;
      this.interval = parseInt(document.body.dataset.interval || "1500", 10);
      if (!this.poll) {
        liveState("", "static page");
        return;
      }
      this.tick();
    },

    schedule() {
      clearTimeout(this.timer);
      if (!this.stopped) this.timer = setTimeout(() => this.tick(), this.interval);
    },

    now() {
      this.last = null; // token changed: fetch and re-render whatever the answer
      this.stopped = false;
      this.tick();
    },

    async tick() {
      if (this.busy) return;
      if (document.hidden) return this.schedule(); // no polling in a background tab
      this.busy = true;
      try {
        const res = await request(this.poll);
        if (!res.ok) {
          const message = await errorMessage(res);
          banner(message + (res.status === 401 || res.status === 403 ? " (save a valid API token above)" : ""));
          liveState("err", "error");
          return;
        }
        const text = await res.text();
        banner("");
        liveState("on", "live · " + new Date().toLocaleTimeString());
        if (text === this.last) return;
        let keepGoing = true;
        if (autosched.hooks.onData) keepGoing = autosched.hooks.onData(JSON.parse(text)) !== false;
        if (this.partial) {
          const page = await request(this.partial, { headers: { Accept: "text/html" } });
          if (!page.ok) {
            banner(await errorMessage(page));
            liveState("err", "error");
            return;
          }
          swapRegions(await page.text());
        }
        this.last = text;
        if (!keepGoing) {
          this.stopped = true;
          liveState("", "final · " + new Date().toLocaleTimeString());
        }
      } catch (err) {
        banner("Cannot reach the API: " + err.message);
        liveState("err", "offline");
      } finally {
        this.busy = false;
        this.schedule();
      }
    },
  };

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && !poller.stopped) poller.tick();
  });

  autosched.request = request;
  autosched.errorMessage = errorMessage;
  autosched.banner = banner;
  autosched.poller = poller;
  autosched.token = token;

  document.addEventListener("DOMContentLoaded", function () {
    initToken();
    updateTimes(document);
    const filter = document.getElementById("filter");
    if (filter) filter.addEventListener("input", applyFilter);
    setInterval(function () {
      updateTimes(document);
    }, 1000);
    poller.start();
  });
})();
