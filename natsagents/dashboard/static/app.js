// natsagents dashboard: plain JavaScript, no build step, no third-party code.
// Every value shown comes from the cluster and is untrusted: the DOM is built with
// textContent only (never innerHTML), so names and bodies cannot inject markup.
"use strict";

(function () {
  const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#475569", "#ca8a04"];
  const PAGE = 50;

  const state = {
    tab: "overview",
    overview: null,
    series: null,
    agents: { offset: 0, total: 0, items: [], q: "", kind: "", node: "", status: "" },
    selected: null, // "Kind/id" of the agent shown in the detail panel
    letters: [],
    failures: 0,
    lastOk: 0,
    colors: new Map(),
  };

  // -- helpers --------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const Charts = window.NatsagentsCharts;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [key, value] of Object.entries(attrs)) {
        if (value === undefined || value === null || value === false) continue;
        if (key === "class") node.className = value;
        else if (key === "text") node.textContent = value;
        else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
        else if (key === "dataset") Object.assign(node.dataset, value);
        else node.setAttribute(key, value === true ? "" : String(value));
      }
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function colorFor(name) {
    if (!state.colors.has(name)) state.colors.set(name, PALETTE[state.colors.size % PALETTE.length]);
    return state.colors.get(name);
  }

  function fmtInt(n) {
    return typeof n === "number" && isFinite(n) ? Math.round(n).toLocaleString("en-US") : "–";
  }

  function fmtNum(n, digits) {
    if (typeof n !== "number" || !isFinite(n)) return "–";
    if (n === 0) return "0";
    if (Math.abs(n) >= 100) return Math.round(n).toLocaleString("en-US");
    return n.toFixed(digits === undefined ? (Math.abs(n) >= 10 ? 1 : 2) : digits);
  }

  function fmtDuration(seconds) {
    if (typeof seconds !== "number" || !isFinite(seconds)) return "–";
    const s = Math.max(0, Math.floor(seconds));
    if (s >= 86400) return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
    if (s >= 3600) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    if (s >= 60) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    return s + "s";
  }

  function fmtBytes(n) {
    if (typeof n !== "number" || !isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? n : n.toFixed(n >= 10 ? 0 : 1)) + " " + units[i];
  }

  function fmtTime(unix) {
    if (typeof unix !== "number" || !unix) return "–";
    return new Date(unix * 1000).toLocaleTimeString("en-GB", { hour12: false });
  }

  function fmtCapacity(cap) {
    if (!cap || typeof cap !== "object") return "unlimited";
    const parts = [];
    if (typeof cap.cpu === "number") parts.push("cpu " + cap.cpu);
    if (typeof cap.memory === "number") parts.push("mem " + fmtBytes(cap.memory));
    if (cap.custom && typeof cap.custom === "object") {
      for (const [k, v] of Object.entries(cap.custom)) parts.push(k + " " + v);
    }
    return parts.length ? parts.join(", ") : "unlimited";
  }

  function toast(message, bad) {
    const t = el("div", { class: "toast" + (bad ? " bad" : ""), role: "status", text: message });
    $("toasts").append(t);
    setTimeout(() => t.remove(), bad ? 8000 : 4500);
  }

  // Rows that did not change stay in the page (a click or a selection on them is not lost
  // to the next refresh); only changed rows are replaced.
  function setRows(tbody, rows, emptyText, columns) {
    const wanted = rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: columns, text: emptyText }))];
    const old = Array.from(tbody.rows);
    wanted.forEach((row, i) => {
      const current = old[i];
      if (!current) tbody.append(row);
      else if (!current.isEqualNode(row)) current.replaceWith(row);
    });
    for (const extra of old.slice(wanted.length)) extra.remove();
  }

  // -- the API --------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, body) {
      super((body && body.message) || "HTTP " + status);
      this.status = status;
      this.code = body && body.error;
    }
  }

  async function api(path, body) {
    const options = body === undefined
      ? { headers: { Accept: "application/json" }, cache: "no-store" }
      : { method: "POST", headers: { "Content-Type": "application/json", Accept: "application/json" }, body: JSON.stringify(body) };
    const response = await fetch(path, options);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) throw new HttpError(response.status, data);
    return data;
  }

  function connection(ok, message) {
    const dot = $("conn-dot");
    dot.className = "dot " + (ok ? "ok" : "bad");
    $("conn-text").textContent = message;
  }

  // -- confirmation dialog --------------------------------------------------------

  function confirmAction(title, text, okLabel) {
    const dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = okLabel || "Confirm";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "";
      dialog.showModal();
      $("confirm-cancel").focus();
    });
  }

  async function act(path, body, what) {
    try {
      const result = await api(path, body);
      const action = result && result.action;
      if (action && action.status === "running") toast(what + ": started");
      else toast(what + ": done" + describeResult(action && action.result));
      await refresh(true);
      return result;
    } catch (e) {
      toast(what + " failed: " + e.message, true);
      await refresh(true);
      return null;
    }
  }

  function describeResult(result) {
    if (!result || typeof result !== "object") return "";
    if ("pause_ms" in result) return " (pause " + fmtNum(result.pause_ms, 1) + " ms)";
    if ("inbox_seq" in result) return " (inbox seq " + result.inbox_seq + ")";
    return "";
  }

  // -- tabs -----------------------------------------------------------------------

  function showTab(name) {
    if (!["overview", "agents", "dead-letters", "activity"].includes(name)) name = "overview";
    state.tab = name;
    for (const a of document.querySelectorAll(".tab")) a.classList.toggle("active", a.dataset.tab === name);
    for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-" + name;
    if (name === "overview") drawCharts();
    refresh(true);
  }

  // -- overview -------------------------------------------------------------------

  function renderOverview() {
    const o = state.overview;
    if (!o) return;
    $("prefix").textContent = "prefix " + o.prefix;
    const nodes = o.nodes || [];
    const live = nodes.filter((n) => n.live).length;
    const draining = nodes.filter((n) => n.draining).length;
    $("stat-nodes").textContent = live + " / " + nodes.length;
    $("stat-nodes-note").textContent = draining ? draining + " draining" : nodes.length ? "all taking agents" : "no members yet";
    $("stat-agents").textContent = fmtInt(o.catalog.agents);
    const kinds = Object.keys(o.counts.kind || {}).length;
    $("stat-agents-note").textContent = o.catalog.ready ? kinds + (kinds === 1 ? " kind" : " kinds") : "loading the directory…";
    const rates = Object.values(o.kinds || {});
    if (rates.length) {
      const total = rates.reduce((sum, r) => sum + (r.rate || 0), 0);
      const errors = rates.reduce((sum, r) => sum + (r.errors || 0), 0);
      $("stat-rate").textContent = fmtNum(total);
      $("stat-rate-note").textContent = errors ? fmtNum(errors) + " errors / s" : "no errors";
    } else {
      $("stat-rate").textContent = "–";
      $("stat-rate-note").textContent = "no request figures from nodes";
    }
    const dlq = o.dead_letters;
    $("stat-dlq").textContent = dlq === null || dlq === undefined ? "–" : fmtInt(dlq);
    $("stat-dlq-note").textContent = dlq ? "waiting for replay or delete" : "none";
    const pill = $("dlq-pill");
    pill.hidden = !dlq;
    pill.textContent = dlq ? String(dlq) : "";

    const problems = Object.entries(o.errors || {}).map(([k, v]) => k + ": " + v);
    const banner = $("banner");
    banner.hidden = problems.length === 0;
    banner.textContent = problems.length ? "Some figures could not be read — " + problems.join("; ") : "";

    renderNodes(nodes);
    renderKinds(o);
    renderFilters(o);
    renderActivity(o.actions || []);
  }

  function meter(fraction) {
    if (typeof fraction !== "number" || !isFinite(fraction)) return el("span", { class: "muted", text: "–" });
    const pct = Math.max(0, Math.min(1, fraction)) * 100;
    const level = pct >= 90 ? " bad" : pct >= 70 ? " warn" : "";
    const fill = el("div", { class: "fill" + level });
    fill.style.width = pct.toFixed(1) + "%";
    return el("div", { class: "meter" }, el("div", { class: "bar" }, fill), el("span", { class: "val", text: pct.toFixed(0) + "%" }));
  }

  // A node's own view of the partition it may be in (services API metadata.partition).
  const PARTITION_BADGES = {
    peers_lapsed: ["warn", "peers lapsed", "majority side: members it saw live have lapsed"],
    quorum_lost: ["bad", "minority", "cut off from the JetStream quorum: its strong agents pause"],
    nats_unreachable: ["bad", "no NATS", "its own NATS connection is down"],
  };

  function nodeState(n) {
    const badges = [];
    if (!n.live) badges.push(el("span", { class: "badge bad", text: "lapsed" }));
    else if (n.draining) badges.push(el("span", { class: "badge warn", text: "draining" }));
    else badges.push(el("span", { class: "badge ok", text: "live" }));
    const side = PARTITION_BADGES[n.partition];
    if (side) badges.push(el("span", { class: "badge " + side[0] + " partition", title: side[2], text: side[1] }));
    return badges;
  }

  function renderNodes(nodes) {
    const canUndrain = state.overview && state.overview.features && state.overview.features.undrain;
    const rows = nodes.map((n) => {
      const load = n.load || {};
      const buttons = [];
      if (n.live && !n.draining) {
        buttons.push(el("button", {
          class: "btn small", type: "button", text: "Drain…", dataset: { action: "drain", node: n.node },
          onclick: () => drainNode(n.node, load.agents),
        }));
      }
      if (n.draining && canUndrain) {
        buttons.push(el("button", {
          class: "btn small", type: "button", text: "Undrain…", dataset: { action: "undrain", node: n.node },
          onclick: () => undrainNode(n.node),
        }));
      }
      return el("tr", { dataset: { node: n.node } },
        el("td", { class: "mono", text: n.node }),
        el("td", null, ...nodeState(n)),
        el("td", { class: "num", text: n.live ? fmtInt(load.agents) : "–" }),
        el("td", { class: "num", text: n.live ? fmtInt(load.mailbox_backlog) : "–" }),
        el("td", null, n.live ? meter(load.cpu) : "–"),
        el("td", null, n.live ? meter(load.memory) : "–"),
        el("td", null, ...(n.kinds || []).map((k) => el("span", { class: "tag", text: k }))),
        el("td", { class: "small", text: fmtCapacity(n.capacity) }),
        el("td", null, ...((n.tags || []).length ? n.tags.map((t) => el("span", { class: "tag", text: t })) : [el("span", { class: "muted", text: "–" })])),
        el("td", { class: "num", text: fmtNum(n.age, 1) + " s ago" }),
        el("td", { class: "actions-col" }, ...buttons),
      );
    });
    setRows($("nodes-table").tBodies[0], rows, "No nodes: start one with 'natsagents node'", 11);
    $("nodes-note").textContent = nodes.length ? "load as of each node's last heartbeat" : "";
  }

  function renderKinds(o) {
    const names = new Set(Object.keys(o.counts.kind || {}));
    for (const n of o.nodes || []) for (const k of n.kinds || []) names.add(k);
    for (const k of Object.keys(o.kind_details || {})) names.add(k);
    const rows = Array.from(names).sort().map((kind) => {
      const rate = (o.kinds || {})[kind] || {};
      const detail = (o.kind_details || {})[kind] || {};
      const hosts = (o.nodes || []).filter((n) => n.live && (n.kinds || []).includes(kind)).length;
      const hot = (detail.hot || []).slice(0, 3).map((a) => el("span", {
        class: "tag mono", title: a.node + ": " + a.recent + " recent, " + a.backlog + " waiting, " + a.busy + " running",
        text: a.agent,
      }));
      const settings = detail.settings || {};
      const described = Object.keys(settings).sort().map((k) => k + ": " + (settings[k] || "none")).join("\n");
      const mode = settings.consistency
        ? el("span", { class: "tag mode-" + settings.consistency, title: described, text: settings.consistency })
        : el("span", { class: "muted", text: "–" });
      return el("tr", { dataset: { kind: kind } },
        el("td", null, el("span", { class: "swatch-inline" }), kind),
        el("td", { class: "mode" }, mode),
        el("td", { class: "num", text: fmtInt((o.counts.kind || {})[kind] || 0) }),
        el("td", { class: "num", text: String(hosts) }),
        el("td", { class: "num", text: fmtNum(rate.rate) }),
        el("td", { class: "num", text: typeof rate.latency_ms === "number" ? fmtNum(rate.latency_ms) + " ms" : "–" }),
        el("td", { class: "num", text: fmtNum(rate.errors) }),
        el("td", { class: "num", text: fmtInt(detail.backlog) }),
        el("td", null, ...(hot.length ? hot : [el("span", { class: "muted", text: "–" })])),
      );
    });
    for (const row of rows) {
      row.cells[0].firstChild.style.background = colorFor("kinds:" + row.dataset.kind);
    }
    setRows($("kinds-table").tBodies[0], rows, "No kinds hosted yet", 9);
  }

  async function drainNode(node, agents) {
    const n = typeof agents === "number" ? fmtInt(agents) + " agents" : "its agents";
    const ok = await confirmAction(
      "Drain node " + node + "?",
      "The node stops taking new agents and moves " + n + " to other nodes (those no node can take stop, with their state saved). It keeps running.",
      "Drain",
    );
    if (ok) await act("/api/drain", { node: node }, "Drain " + node);
  }

  async function undrainNode(node) {
    const ok = await confirmAction("Undrain node " + node + "?", "The node takes new agents again.", "Undrain");
    if (ok) await act("/api/undrain", { node: node }, "Undrain " + node);
  }

  function renderFilters(o) {
    const fill = (select, values, label) => {
      const current = select.value;
      const wanted = ["", ...values];
      const have = Array.from(select.options).map((opt) => opt.value);
      if (have.join("\n") === wanted.join("\n")) return;
      select.replaceChildren(el("option", { value: "", text: label }), ...values.map((v) => el("option", { value: v, text: v })));
      select.value = wanted.includes(current) ? current : "";
    };
    const kinds = new Set(Object.keys(o.counts.kind || {}));
    for (const n of o.nodes || []) for (const k of n.kinds || []) kinds.add(k);
    const nodes = new Set((o.nodes || []).map((n) => n.node));
    for (const k of Object.keys(o.counts.node || {})) nodes.add(k);
    fill($("filter-kind"), Array.from(kinds).sort(), "All kinds");
    fill($("filter-node"), Array.from(nodes).sort(), "All nodes");
    const strategy = $("migrate-strategy");
    if (!strategy.options.length) {
      for (const s of o.features.strategies || []) strategy.append(el("option", { value: s, text: s.replace("_", " ") }));
    }
  }

  // -- charts ---------------------------------------------------------------------

  let charts = null;

  function makeCharts() {
    charts = {
      rate: new Charts.LineChart($("chart-rate"), $("legend-rate"), {
        empty: "No request figures yet (nodes' $SRV.STATS)", format: (v) => fmtNum(v) + "/s",
      }),
      latency: new Charts.LineChart($("chart-latency"), $("legend-latency"), {
        empty: "No request figures yet", format: (v) => fmtNum(v) + " ms",
      }),
      agents: new Charts.LineChart($("chart-agents"), $("legend-agents"), {
        empty: "No heartbeats yet", format: (v) => fmtInt(v),
      }),
    };
  }

  function seriesOf(points, group, field) {
    const names = new Set();
    for (const p of points) for (const name of Object.keys(p[group] || {})) names.add(name);
    return Array.from(names).sort().map((name) => {
      const pts = points.map((p) => {
        const entry = (p[group] || {})[name];
        const v = entry ? entry[field] : null;
        return [p.t, typeof v === "number" && isFinite(v) ? v : null];
      });
      const known = pts.filter(([, v]) => v !== null);
      return { name: name, color: colorFor(group + ":" + name), points: pts, last: known.length ? known[known.length - 1][1] : null };
    });
  }

  function drawCharts() {
    if (!charts || !state.series) return;
    const points = state.series.points || [];
    charts.rate.set(seriesOf(points, "kinds", "rate"));
    charts.latency.set(seriesOf(points, "kinds", "latency_ms"));
    charts.agents.set(seriesOf(points, "nodes", "agents"));
  }

  // -- agents ---------------------------------------------------------------------

  function agentQuery() {
    const a = state.agents;
    const params = new URLSearchParams({ offset: String(a.offset), limit: String(PAGE) });
    if (a.q) params.set("q", a.q);
    if (a.kind) params.set("kind", a.kind);
    if (a.node) params.set("node", a.node);
    if (a.status) params.set("status", a.status);
    return "/api/agents?" + params.toString();
  }

  let agentsAsked = 0;

  async function loadAgents() {
    const asked = ++agentsAsked;
    const page = await api(agentQuery());
    if (asked !== agentsAsked) return; // a newer query (filters changed) answers instead
    const a = state.agents;
    a.total = page.total;
    a.items = page.items;
    if (a.offset > 0 && a.offset >= a.total) {
      a.offset = Math.max(0, Math.floor((a.total - 1) / PAGE) * PAGE);
      return loadAgents();
    }
    renderAgents(page.ready);
  }

  function statusBadge(status) {
    const cls = status === "active" ? "ok" : status === "migrating" ? "info" : status === "stopping" ? "bad" : "warn";
    return el("span", { class: "badge " + cls, text: status });
  }

  function renderAgents(ready) {
    const a = state.agents;
    const now = Date.now() / 1000;
    const rows = a.items.map((r) => el("tr", {
      class: r.agent === state.selected ? "selected" : "", dataset: { agent: r.agent },
      onclick: () => openAgent(r.agent),
    },
      el("td", { class: "mono", text: r.agent }),
      el("td", { class: "mono", text: r.node }),
      el("td", null, statusBadge(r.status)),
      el("td", { class: "num", text: fmtInt(r.epoch) }),
      el("td", { text: r.restart }),
      el("td", { class: "num", text: r.since ? fmtDuration(now - r.since) : "–" }),
    ));
    const empty = ready === false ? "Loading the directory…" : a.q || a.kind || a.node || a.status ? "No agent matches" : "No active agents";
    setRows($("agents-table").tBodies[0], rows, empty, 6);
    const first = a.total ? a.offset + 1 : 0;
    const last = a.offset + a.items.length;
    $("agents-range").textContent = fmtInt(first) + "–" + fmtInt(last) + " of " + fmtInt(a.total);
    $("page-prev").disabled = a.offset === 0;
    $("page-next").disabled = last >= a.total;
  }

  async function openAgent(address) {
    state.selected = address;
    for (const tr of $("agents-table").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.agent === address);
    $("agent-detail").hidden = false;
    $("detail-title").textContent = address;
    await loadAgent();
  }

  async function loadAgent() {
    const address = state.selected;
    if (!address) return;
    let info;
    try {
      info = await api("/api/agent?" + new URLSearchParams({ agent: address }).toString());
    } catch (e) {
      $("detail-fields").replaceChildren(el("dt", { text: "error" }), el("dd", { text: e.message }));
      return;
    }
    if (state.selected !== address) return;
    const rec = info.record;
    const fields = [];
    const add = (name, value) => fields.push(el("dt", { text: name }), el("dd", null, value));
    if (rec) {
      add("node", el("span", { class: "mono", text: rec.node }));
      add("status", statusBadge(rec.status));
      add("epoch", String(rec.epoch));
      add("restart", rec.restart);
      add("active since", rec.since ? new Date(rec.since * 1000).toLocaleString("en-GB", { hour12: false }) : "–");
      if (rec.needs && Object.keys(rec.needs).length) add("needs", fmtCapacity(rec.needs));
      if (rec.hints && Object.keys(rec.hints).length) add("hints", JSON.stringify(rec.hints));
    } else {
      add("status", el("span", { class: "badge", text: "not active" }));
    }
    $("detail-fields").replaceChildren(...fields);
    const st = info.state;
    if (st) {
      const meta = ["epoch " + st.epoch, "revision " + st.revision, st.bytes !== null ? fmtBytes(st.bytes) : null,
        st.seq ? "stream seq " + st.seq : null, st.applied ? st.applied + " recent messages remembered" : null,
        st.data.truncated ? "preview truncated" : null];
      $("state-meta").textContent = meta.filter(Boolean).join(" · ");
      $("agent-state").textContent = st.empty ? "(no state saved yet)" : JSON.stringify(st.data.value, null, 2);
    } else {
      $("state-meta").textContent = info.state_error ? "" : "no stored state";
      $("agent-state").textContent = info.state_error ? "error: " + info.state_error : "(none)";
    }
    // migration targets: live, not draining nodes hosting the kind, other than the owner
    const kind = address.split("/")[0];
    const targets = ((state.overview && state.overview.nodes) || []).filter(
      (n) => n.live && !n.draining && (n.kinds || []).includes(kind) && (!rec || n.node !== rec.node),
    );
    const select = $("migrate-target");
    const previous = select.value;
    select.replaceChildren(...targets.map((n) => el("option", { value: n.node, text: n.node })));
    if (targets.some((n) => n.node === previous)) select.value = previous;
    $("migrate-button").disabled = !rec || targets.length === 0;
    select.disabled = targets.length === 0;
    if (!targets.length) select.append(el("option", { value: "", text: rec ? "no other node hosts " + kind : "agent not active" }));
  }

  async function migrateSelected() {
    const address = state.selected;
    const to = $("migrate-target").value;
    const strategy = $("migrate-strategy").value || "checkpoint_restore";
    if (!address || !to) return;
    const ok = await confirmAction(
      "Migrate " + address + "?",
      "Move the agent to node " + to + " (" + strategy.replace("_", " ") + "). Callers keep working; messages in the gap are retried.",
      "Migrate",
    );
    if (!ok) return;
    $("migrate-button").disabled = true;
    await act("/api/migrate", { agent: address, to: to, strategy: strategy }, "Migrate " + address);
    await loadAgent();
  }

  // -- dead letters ---------------------------------------------------------------

  async function loadLetters() {
    const page = await api("/api/dead-letters?limit=100");
    state.letters = page.items;
    const now = Date.now();
    const rows = page.items.map((d) => el("tr", { dataset: { seq: String(d.seq) } },
      el("td", { class: "num mono", text: String(d.seq) }),
      el("td", { class: "mono", text: d.agent || "–" }),
      el("td", { text: d.action || "–" }),
      el("td", null, el("span", { class: "badge bad", text: d.error || "–" })),
      el("td", { class: "num", text: String(d.deliveries) }),
      el("td", { class: "num", text: d.time_ms ? fmtDuration((now - d.time_ms) / 1000) : "–" }),
      el("td", { class: "reason", title: d.reason, text: d.reason || "–" }),
      el("td", { class: "actions-col" },
        el("button", { class: "btn small", type: "button", text: "View", dataset: { action: "view" }, onclick: () => showLetter(d) }),
        el("button", { class: "btn small", type: "button", text: "Replay…", dataset: { action: "replay" }, onclick: () => replayLetter(d) }),
        el("button", { class: "btn small", type: "button", text: "Delete…", dataset: { action: "delete" }, onclick: () => deleteLetter(d) }),
      ),
    ));
    setRows($("dlq-table").tBodies[0], rows, "No dead letters", 8);
    const total = page.total;
    $("dlq-note").textContent = typeof total === "number" && total > page.items.length
      ? "oldest " + page.items.length + " of " + fmtInt(total) + " (natsagents dlq ls shows all)" : "oldest first";
  }

  function showLetter(d) {
    $("letter-title").textContent = "Dead letter " + d.seq + " · " + (d.agent || "?");
    const fields = [];
    const add = (k, v) => fields.push(el("dt", { text: k }), el("dd", { text: v }));
    add("action", d.action || "–");
    add("error", d.error || "–");
    add("reason", d.reason || "–");
    add("deliveries", String(d.deliveries));
    add("inbox seq", String(d.stream_seq));
    add("message id", d.message_id || "–");
    add("subject", d.subject || "–");
    add("size", fmtBytes(d.bytes));
    $("letter-fields").replaceChildren(...fields);
    const body = d.body ? JSON.stringify(d.body.value, null, 2) + (d.body.truncated ? "\n… (truncated)" : "")
      : (d.body_error || "") + "\n" + JSON.stringify(d.body_raw && d.body_raw.value);
    $("letter-body").textContent = body;
    $("letter-headers").textContent = JSON.stringify(d.headers || {}, null, 2);
    $("letter").showModal();
  }

  async function replayLetter(d) {
    const ok = await confirmAction("Replay dead letter " + d.seq + "?",
      "Publish it to " + (d.agent || "its agent") + "'s durable inbox again (then delete it here). Do this once the agent is fixed.", "Replay");
    if (ok && await act("/api/dead-letters/replay", { seq: d.seq }, "Replay " + d.seq)) await loadLetters();
  }

  async function deleteLetter(d) {
    const ok = await confirmAction("Delete dead letter " + d.seq + "?", "The message to " + (d.agent || "its agent") + " is dropped for good.", "Delete");
    if (ok && await act("/api/dead-letters/delete", { seq: d.seq }, "Delete " + d.seq)) await loadLetters();
  }

  // -- activity -------------------------------------------------------------------

  function summarize(action, r) {
    if (!r || typeof r !== "object") return "";
    if (action === "migrate" && "to" in r) {
      return r.moved === false ? "already on " + r.to : "from " + r.from + " to " + r.to + ", paused " + fmtNum(r.pause_ms, 1) + " ms";
    }
    if (action === "drain" && "moved" in r) return "moved " + fmtInt(r.moved) + ", stopped " + fmtInt(r.stopped);
    if (action === "replay" && "inbox_seq" in r) return "republished as inbox seq " + r.inbox_seq;
    if (action === "delete") return "deleted";
    return JSON.stringify(r);
  }

  function renderActivity(actions) {
    const rows = actions.map((a) => {
      const badge = a.status === "ok" ? "ok" : a.status === "failed" ? "bad" : "info";
      const result = a.error ? a.error.code + ": " + a.error.message : summarize(a.action, a.result);
      return el("tr", null,
        el("td", { class: "num", text: String(a.id) }),
        el("td", { text: a.action }),
        el("td", { class: "mono", text: a.target }),
        el("td", null, el("span", { class: "badge " + badge, text: a.status })),
        el("td", { text: fmtTime(a.started) }),
        el("td", { class: "num", text: a.ended ? fmtNum(a.ended - a.started, 2) + " s" : "…" }),
        el("td", { class: "reason", title: result, text: result || "–" }),
      );
    });
    setRows($("activity-table").tBodies[0], rows, "No actions yet", 7);
  }

  // -- the loop -------------------------------------------------------------------

  let timer = null;
  let busy = false;

  async function refresh(now) {
    if (busy) return;
    busy = true;
    if (timer) clearTimeout(timer);
    try {
      const [overview, series] = await Promise.all([api("/api/overview"), api("/api/series")]);
      state.overview = overview;
      state.series = series;
      renderOverview();
      if (state.tab === "overview") drawCharts();
      if (state.tab === "agents") {
        await loadAgents();
        if (state.selected && !now) await loadAgent();
      }
      if (state.tab === "dead-letters") await loadLetters();
      state.failures = 0;
      state.lastOk = Date.now();
      connection(true, "live · " + fmtTime(Date.now() / 1000));
    } catch (e) {
      state.failures += 1;
      connection(false, "cannot reach the dashboard (" + e.message + ")");
    } finally {
      busy = false;
      const interval = (state.overview && state.overview.interval) || 2;
      timer = setTimeout(() => refresh(false), Math.min(30, interval * Math.pow(2, Math.min(state.failures, 4))) * 1000);
    }
  }

  function debounce(fn, ms) {
    let t = null;
    return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
  }

  function onFilters() {
    const a = state.agents;
    a.q = $("agent-search").value.trim();
    a.kind = $("filter-kind").value;
    a.node = $("filter-node").value;
    a.status = $("filter-status").value;
    a.offset = 0;
    loadAgents().catch((e) => toast("Agents: " + e.message, true));
  }

  function init() {
    makeCharts();
    for (const a of document.querySelectorAll(".tab")) {
      a.addEventListener("click", (e) => { e.preventDefault(); history.replaceState(null, "", "#" + a.dataset.tab); showTab(a.dataset.tab); });
    }
    $("agent-search").addEventListener("input", debounce(onFilters, 250));
    for (const id of ["filter-kind", "filter-node", "filter-status"]) $(id).addEventListener("change", onFilters);
    $("page-prev").addEventListener("click", () => { state.agents.offset = Math.max(0, state.agents.offset - PAGE); loadAgents(); });
    $("page-next").addEventListener("click", () => { state.agents.offset += PAGE; loadAgents(); });
    $("detail-close").addEventListener("click", () => { state.selected = null; $("agent-detail").hidden = true; renderAgents(); });
    $("migrate-button").addEventListener("click", migrateSelected);
    showTab((location.hash || "#overview").slice(1));
  }

  document.addEventListener("DOMContentLoaded", init);
})();
