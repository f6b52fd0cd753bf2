// The gateway's dashboard: polls GET /admin/stats and shows each route's figures over
// the window between the last two polls.
//
// The server keeps no state between polls: /admin/stats holds counts since the process
// started, and the figures are differences of two answers. windowFigures and quantile
// are the same arithmetic as gateway/admin/figures.py, line for line; the tests hold
// them to it.
//
// The admin token arrives in the URL fragment (/#token=...), which the browser never
// sends to the server, so it is in no access log or proxy log. It is kept in
// sessionStorage (gone when the tab closes) and taken out of the address bar at once.
"use strict";

(() => {
  const POLL_MS = 2000;
  const TOKEN_KEY = "gateway-admin-token";
  // As in figures.py.
  const CACHE_HITS = ["hit", "collapsed"];
  const REFUSALS = ["refused", "fail_closed"];
  const DASH = "\u2014";

  // -- arithmetic (mirrors gateway/admin/figures.py) --------------------------------

  function sum(values) {
    let total = 0;
    for (const value of values) total += value;
    return total;
  }

  function quantile(q, bounds, counts) {
    const total = sum(counts);
    if (total <= 0) return null;
    const rank = q * total;
    let below = 0;
    for (let index = 0; index < bounds.length; index++) {
      const upper = bounds[index];
      const count = counts[index];
      if (below + count >= rank) {
        const lower = index > 0 ? bounds[index - 1] : 0;
        return lower + (upper - lower) * ((rank - below) / count);
      }
      below += count;
    }
    return bounds[bounds.length - 1];
  }

  function minus(now, then) {
    return then ? now.map((value, index) => value - then[index]) : now.slice();
  }

  function minusCounts(now, then) {
    const out = {};
    for (const [name, count] of Object.entries(now)) out[name] = count - (then[name] || 0);
    return out;
  }

  function share(part, whole) {
    return whole > 0 ? part / whole : null;
  }

  function backendFigures(backend, old, bounds, seconds) {
    const calls = backend.calls - (old ? old.calls : 0);
    const duration = minus(backend.duration, old ? old.duration : null);
    const outcomes = minusCounts(backend.outcomes, old ? old.outcomes : {});
    return {
      name: backend.name,
      calls: calls / seconds,
      p99: quantile(0.99, bounds, duration),
      timeout_share: share(outcomes.timeout || 0, calls),
    };
  }

  function windowFigures(previous, current) {
    const seconds = current.monotonic - previous.monotonic;
    if (seconds <= 0) return [];
    const before = new Map(previous.routes.map((route) => [route.name, route]));
    const bounds = current.buckets;
    const out = [];
    for (const route of current.routes) {
      const old = before.get(route.name);
      if (!old) continue;
      const requests = route.requests - old.requests;
      if (requests < 0) return [];
      const duration = minus(route.duration, old.duration);
      const statuses = minusCounts(route.statuses, old.statuses);
      const cache = minusCounts(route.cache, old.cache);
      const limits = minusCounts(route.rate_limit, old.rate_limit);
      const oldBackends = new Map(old.backends.map((backend) => [backend.name, backend]));
      const lookups = sum(Object.values(cache));
      out.push({
        name: route.name,
        rate: requests / seconds,
        p50: quantile(0.5, bounds, duration),
        p99: quantile(0.99, bounds, duration),
        error_share: share(statuses["5xx"] || 0, requests),
        partial_share: share(route.partial - old.partial, requests),
        cache_hit_ratio: share(sum(CACHE_HITS.map((name) => cache[name] || 0)), lookups),
        refusals: sum(REFUSALS.map((name) => limits[name] || 0)) / seconds,
        backends: route.backends.map((backend) =>
          backendFigures(backend, oldBackends.get(backend.name), bounds, seconds),
        ),
      });
    }
    return out;
  }

  // For the tests and the browser console; the page itself does not need it.
  globalThis.gatewayDashboard = Object.freeze({ quantile, windowFigures });

  // -- formatting --------------------------------------------------------------------

  function formatSeconds(seconds) {
    if (seconds === null) return DASH;
    const ms = seconds * 1000;
    if (ms < 100) return `${ms.toFixed(1)} ms`;
    if (ms < 1000) return `${ms.toFixed(0)} ms`;
    return `${Number(seconds.toFixed(2))} s`;
  }

  function formatRate(perSecond) {
    if (perSecond === null) return DASH;
    return `${perSecond < 100 ? perSecond.toFixed(1) : perSecond.toFixed(0)}/s`;
  }

  function formatShare(ratio) {
    if (ratio === null) return DASH;
    const percent = ratio * 100;
    if (percent === 0) return "0 %";
    if (percent < 0.1) return "<0.1 %";
    return `${percent < 10 ? percent.toFixed(1) : percent.toFixed(0)} %`;
  }

  // -- the token ---------------------------------------------------------------------

  // sessionStorage can be unavailable (storage disabled): the token then lives as long
  // as the page.
  let memoryToken = null;

  function storeToken(token) {
    memoryToken = token;
    try {
      if (token === null) sessionStorage.removeItem(TOKEN_KEY);
      else sessionStorage.setItem(TOKEN_KEY, token);
    } catch {
      /* kept in memory only */
    }
  }

  function storedToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || memoryToken;
    } catch {
      return memoryToken;
    }
  }

  function tokenFromFragment() {
    const token = new URLSearchParams(location.hash.slice(1)).get("token");
    if (token) {
      storeToken(token);
      // Out of the address bar and the history, before anything else runs.
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  // -- the page ----------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function element(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    // Text nodes only: route and backend names come from the config and are never
    // parsed as markup.
    for (const child of children) {
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function setStatus(text, kind) {
    const status = $("status");
    status.textContent = text;
    status.className = kind || "";
  }

  // A figure cell: data-route, data-figure (and data-backend) to find it, data-value
  // the unrounded number (empty when there is none).
  function figure(route, name, value, text, backend) {
    return element(
      "td",
      {
        "data-route": route,
        "data-backend": backend,
        "data-figure": name,
        "data-value": value === null || value === undefined ? "" : value,
      },
      text,
    );
  }

  function budgetBar(seconds, budgetSeconds) {
    const bar = element("div", { class: "bar", "aria-hidden": "true" });
    if (seconds === null || !(budgetSeconds > 0)) return bar;
    // The track shows a quarter more than the budget, or up to the value when it is
    // further out; the tick marks the budget.
    const scale = Math.max(budgetSeconds * 1.25, seconds);
    const fill = element("span", { class: seconds > budgetSeconds ? "fill over" : "fill" });
    fill.style.width = `${(100 * seconds) / scale}%`;
    const tick = element("span", { class: "tick" });
    tick.style.left = `${(100 * budgetSeconds) / scale}%`;
    bar.append(fill, tick);
    return bar;
  }

  function latencyRow(route, name, seconds, budgetSeconds) {
    const over = seconds !== null && seconds > budgetSeconds;
    const ofBudget =
      seconds === null || !(budgetSeconds > 0)
        ? ""
        : `${formatShare(seconds / budgetSeconds)} of budget`;
    return element(
      "tr",
      {},
      element("th", { scope: "row" }, name),
      figure(route, name, seconds, formatSeconds(seconds)),
      element(
        "td",
        { class: "bar-cell" },
        budgetBar(seconds, budgetSeconds),
        element("span", { class: over ? "of-budget over" : "of-budget" }, ofBudget),
      ),
    );
  }

  function routeCard(route, figures, index) {
    const name = route.name;
    const f = figures || {};
    const value = (key) => (figures ? f[key] : null);
    const budget = route.budget_ms / 1000;
    const headingId = `route-${index}`;
    const kind = { fanout: "fan-out", proxy: "proxy", builtin: "built-in" }[route.kind];

    const columns = [
      ["rate", "requests", formatRate(value("rate"))],
      ["error_share", "5xx", formatShare(value("error_share"))],
    ];
    if (route.kind === "fanout") {
      columns.push(["partial_share", "partial", formatShare(value("partial_share"))]);
    }
    columns.push(
      ["cache_hit_ratio", "cache hits", formatShare(value("cache_hit_ratio"))],
      ["refusals", "refused (429)", formatRate(value("refusals"))],
    );
    const summary = element(
      "table",
      { class: "summary" },
      element("caption", { class: "visually-hidden" }, `${name}: traffic`),
      element(
        "thead",
        {},
        element("tr", {}, ...columns.map(([, label]) => element("th", { scope: "col" }, label))),
      ),
      element(
        "tbody",
        {},
        element("tr", {}, ...columns.map(([key, , text]) => figure(name, key, value(key), text))),
      ),
    );

    const latency = element(
      "table",
      { class: "latency" },
      element("caption", { class: "visually-hidden" }, `${name}: latency against the budget`),
      element(
        "tbody",
        {},
        latencyRow(name, "p50", value("p50"), budget),
        latencyRow(name, "p99", value("p99"), budget),
      ),
    );

    const card = element(
      "section",
      { class: "route", "data-route": name, "aria-labelledby": headingId },
      element(
        "header",
        {},
        element("h2", { id: headingId }, name),
        element("span", { class: "meta" }, `${kind} \u00b7 budget ${formatSeconds(budget)}`),
      ),
      summary,
      latency,
    );

    if (route.backends.length > 0) {
      const byName = new Map((f.backends || []).map((backend) => [backend.name, backend]));
      const rows = route.backends.map((backend) => {
        const b = byName.get(backend.name) || { calls: null, p99: null, timeout_share: null };
        return element(
          "tr",
          {},
          element("th", { scope: "row" }, backend.name),
          figure(name, "calls", b.calls, formatRate(b.calls), backend.name),
          figure(name, "p99", b.p99, formatSeconds(b.p99), backend.name),
          figure(name, "timeout_share", b.timeout_share, formatShare(b.timeout_share), backend.name),
        );
      });
      card.append(
        element(
          "table",
          { class: "backends" },
          element("caption", {}, route.kind === "fanout" ? "Backends" : "Upstream"),
          element(
            "thead",
            {},
            element(
              "tr",
              {},
              element("th", { scope: "col" }, "name"),
              element("th", { scope: "col" }, "calls"),
              element("th", { scope: "col" }, "p99"),
              element("th", { scope: "col" }, "timeouts"),
            ),
          ),
          element("tbody", {}, ...rows),
        ),
      );
    }
    return card;
  }

  function render(current, figures) {
    const byName = new Map(figures.map((route) => [route.name, route]));
    const cards = current.routes.map((route, index) =>
      routeCard(route, byName.get(route.name), index),
    );
    $("routes").replaceChildren(
      ...(cards.length > 0 ? cards : [element("p", {}, "No routes are configured.")]),
    );
    $("metrics-off").hidden = current.metrics;
    const updated = $("updated");
    const at = new Date(current.time * 1000);
    updated.dateTime = at.toISOString();
    updated.textContent = at.toLocaleTimeString();
  }

  // -- polling -----------------------------------------------------------------------

  let previous = null;
  let timer = null;

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(poll, POLL_MS);
  }

  function showLogin(message) {
    clearTimeout(timer);
    previous = null;
    $("routes").replaceChildren();
    $("login").hidden = false;
    $("forget").hidden = true;
    setStatus(message, message ? "error" : "");
    $("token").focus();
  }

  async function poll() {
    const token = storedToken();
    if (!token) {
      showLogin("");
      return;
    }
    let current;
    try {
      // Relative to the page: it works behind a proxy that mounts the listener on a path.
      const response = await fetch("admin/stats", {
        headers: { Authorization: `Bearer ${token}` },
        cache: "no-store",
      });
      if (response.status === 401) {
        storeToken(null);
        showLogin("The gateway refused this token (401). Paste the current admin token.");
        return;
      }
      if (!response.ok) {
        setStatus(`The gateway answered ${response.status}; trying again.`, "error");
        schedule();
        return;
      }
      current = await response.json();
    } catch (error) {
      setStatus(`Cannot reach the gateway (${error.message}); trying again.`, "error");
      schedule();
      return;
    }
    const figures = previous ? windowFigures(previous, current) : [];
    render(current, figures);
    setStatus(
      previous ? `Figures over the last ${POLL_MS / 1000} s.` : "Measuring a first window\u2026",
    );
    previous = current;
    schedule();
  }

  function start() {
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      $("token").value = "";
      if (!token) return;
      storeToken(token);
      $("login").hidden = true;
      $("forget").hidden = false;
      setStatus("Loading\u2026");
      poll();
    });
    $("forget").addEventListener("click", () => {
      storeToken(null);
      showLogin("");
    });
    tokenFromFragment();
    if (storedToken()) {
      $("login").hidden = true;
      $("forget").hidden = false;
      poll();
    } else {
      showLogin("");
    }
  }

  start();
})();
