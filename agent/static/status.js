// Live updates of the agent's status page. Every 2 s it reads /v1/status and /v1/decisions
// and rebuilds the dynamic parts with DOM calls: text from the agents only ever becomes a
// text node or an attribute value, never markup. It mirrors agent/dashboard.py.
"use strict";

(function () {
  const POLL_MS = 2000;
  const FETCH_TIMEOUT_MS = 5000;
  const body = document.body;
  const tones = JSON.parse(body.dataset.tones || "{}");
  const recent = Number(body.dataset.recent || "20");
  // The agent's wall clock when it rendered the page; the browser's clock may be off.
  const skew = Number(body.dataset.wall) - Date.now() / 1000;
  // Decision id -> its words; a decision never changes once committed.
  const words = new Map();

  function now() {
    return Date.now() / 1000 + skew;
  }

  function tone(table, key) {
    return (tones[table] || {})[key] || "muted";
  }

  function atText(at) {
    if (at === null || at === undefined) return "-";
    const iso = new Date(at * 1000).toISOString();
    return iso.slice(0, 10) + " " + iso.slice(11, 19) + "Z";
  }

  function remainingText(seconds) {
    const whole = Math.max(0, Math.trunc(seconds));
    if (whole < 60) return whole + " s";
    if (whole < 3600) return Math.floor(whole / 60) + " min " + (whole % 60) + " s";
    return Math.floor(whole / 3600) + " h " + Math.floor((whole % 3600) / 60) + " min";
  }

  function capitalize(text) {
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function str(value) {
    return value === null || value === undefined ? "None" : String(value);
  }

  // An element with attributes and children; strings become text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined && child !== false) node.append(child);
    }
    return node;
  }

  function replace(id, nodes) {
    const target = document.getElementById(id);
    if (target) target.replaceChildren(...nodes);
  }

  function emptyRow(columns, text) {
    return [el("tr", { class: "empty" }, el("td", { colspan: columns }, text))];
  }

  function modeReason(decisions, mode) {
    for (let i = decisions.length - 1; i >= 0; i--) {
      const d = decisions[i];
      const evidence = d.evidence || {};
      if (d.kind === "mode_changed" && evidence.to === mode) {
        return [evidence.reason === undefined ? "" : str(evidence.reason), d.at];
      }
    }
    return ["", null];
  }

  function servers(doc) {
    const suspected = new Map();
    for (const s of doc.suspicions || []) {
      suspected.set(str(s.target), (s.unreachable_by || []).map(str));
    }
    return (doc.servers || []).map((s) => {
      const name = str(s.name);
      let state = str(s.state);
      let note = "";
      if (state === "up" && suspected.has(name)) {
        state = "suspected";
        note = "unreachable by " + (suspected.get(name).join(", ") || "?");
      }
      return {
        name, state, note,
        leader: name === doc.leader,
        self: name === doc.server,
        role: str(s.role),
        tone: tone("server", state),
        voter: Boolean(s.voter),
        domain: s.domain === undefined ? "" : str(s.domain),
        incarnation: str(s.incarnation),
      };
    });
  }

  function modeBanner(mode, why, since) {
    if (mode === "normal") return null;
    const text = capitalize(mode) + " mode since " + atText(since) + ": " +
      (why || "no reason recorded") + ".";
    if (mode !== "cascade") return { tone: "warn", text };
    const held = " Automatic replacement is held back; `moonwatch resume` ends it.";
    return { tone: "bad", text: text + held };
  }

  function banners(doc, why, since) {
    const out = [];
    if (doc.leader === null || doc.leader === undefined) {
      out.push({
        tone: "bad",
        text: "No quorum: " + str(doc.server) +
          " knows no Raft leader; nothing heals until one is.",
      });
    }
    const mode = modeBanner(str(doc.mode), why, since);
    if (mode) out.push(mode);
    const rows = servers(doc);
    for (const [state, t] of [["failed", "bad"], ["suspected", "warn"], ["quarantined", "warn"]]) {
      const names = rows.filter((s) => s.state === state).map((s) => s.name);
      if (names.length) out.push({ tone: t, text: capitalize(state) + ": " + names.join(", ") });
    }
    const change = doc.voter_change;
    if (change && typeof change === "object") {
      out.push({
        tone: "warn",
        text: "Voter change in progress: " + str(change.add) + " replaces " + str(change.remove) +
          " (step " + str(change.step) + ", since " + atText(change.since) + ").",
      });
    }
    return out;
  }

  function renderSummary(doc, why) {
    const quorum = doc.leader !== null && doc.leader !== undefined;
    const mode = str(doc.mode);
    const item = (term, cls, text) => el("div", {}, el("dt", {}, term), el("dd", cls, text));
    replace("summary", [
      item("answered by", {}, str(doc.server) + " (pid " + str(doc.pid) + ")"),
      item("Raft leader", { class: quorum ? "tone-ok" : "tone-bad" }, quorum ? str(doc.leader) : "none"),
      item("term", {}, str(doc.term)),
      item("quorum", { class: quorum ? "tone-ok" : "tone-bad" }, quorum ? "yes" : "NO"),
      item("mode", { class: mode === "normal" ? "tone-ok" : "tone-bad" },
        mode + (mode !== "normal" && why ? ": " + why : "")),
    ]);
    const cluster = document.getElementById("cluster");
    if (cluster) cluster.textContent = str(doc.cluster);
  }

  function renderServers(doc) {
    replace("servers", servers(doc).map((s) => el("tr",
      { class: "row-" + s.tone, "data-server": s.name, "data-state": s.state },
      el("td", {}, s.name,
        s.leader && " ", s.leader && el("span", { class: "tag" }, "leader"),
        s.self && " ", s.self && el("span", { class: "tag" }, "this agent")),
      el("td", {}, s.role),
      el("td", { class: "state tone-" + s.tone }, s.state,
        s.note && " ", s.note && el("small", {}, "(" + s.note + ")")),
      el("td", {}, s.voter ? "voter" : "-"),
      el("td", {}, s.domain),
      el("td", {}, s.incarnation))));
  }

  function renderSlots(doc) {
    replace("slots", (doc.slots || []).map((s) => {
      const t = tone("slot", str(s.state));
      return el("tr", { class: "row-" + t, "data-slot": str(s.name) },
        el("td", {}, str(s.name)), el("td", {}, s.owner ? str(s.owner) : "-"),
        el("td", {}, str(s.epoch)), el("td", { class: "state tone-" + t }, str(s.state)),
        el("td", {}, s.address ? str(s.address) : "-"),
        el("td", {}, (s.tenants || []).map(str).join(", ")));
    }));
  }

  function renderStops(doc, at) {
    const active = (doc.stops || []).filter((s) => Number(s.until || 0) > at);
    active.sort((a, b) => (str(a.subdomain) < str(b.subdomain) ? -1 : 1));
    const rows = active.map((s) => el("tr", { class: "row-warn", "data-stop": str(s.subdomain) },
      el("td", {}, str(s.subdomain)), el("td", {}, remainingText(Number(s.until || 0) - at)),
      el("td", {}, atText(Number(s.until || 0))),
      el("td", {}, s.pinned ? "pinned by an operator" : "automatic"),
      el("td", {}, s.reason === undefined ? "" : str(s.reason))));
    replace("stops", rows.length ? rows : emptyRow(5, "no tenant is stopped"));
  }

  function renderBackups(doc) {
    const rows = (doc.backups || []).map((b) => {
      const t = b.last_error ? "bad" : (b.last_ok_at ? "ok" : "muted");
      return el("tr", { class: "row-" + t, "data-backup": str(b.slot) },
        el("td", {}, str(b.slot)), el("td", {}, atText(b.last_ok_at)),
        el("td", {}, atText(b.last_attempt_at)),
        el("td", { class: "tone-" + t }, b.last_error ? str(b.last_error) : "-"));
    });
    replace("backups", rows.length ? rows : emptyRow(4, "no backups on this server"));
  }

  function renderDecisions(latest) {
    const rows = latest.map((d) => el("tr",
      { class: "row-" + tone("decision", d.kind), "data-decision": str(d.id) },
      el("td", {}, el("a", { href: "/decisions/" + encodeURIComponent(str(d.id)) }, atText(d.at))),
      el("td", {}, str(d.kind)), el("td", {}, str(d.subject)),
      el("td", { class: "words" }, words.get(d.id) || str(d.kind) + " about " + str(d.subject))));
    replace("decisions", rows.length ? rows : emptyRow(4, "no decisions yet"));
  }

  function render(doc, decisions) {
    const mode = str(doc.mode);
    const [why, since] = modeReason(decisions, mode);
    const at = now();
    renderSummary(doc, why);
    replace("banners", banners(doc, why, since).map(
      (b) => el("p", { class: "banner tone-" + b.tone }, b.text)));
    renderServers(doc);
    renderSlots(doc);
    renderStops(doc, at);
    renderBackups(doc);
    renderDecisions(decisions.slice(-recent).reverse());
    const updated = document.getElementById("updated");
    if (updated) updated.textContent = atText(at);
  }

  async function getJSON(path) {
    const response = await fetch(path, {
      cache: "no-store",
      headers: { Accept: "application/json" },
      signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
    });
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  // The words of decisions the page does not know yet, one request each, once.
  async function learnWords(latest) {
    const unknown = latest.filter((d) => !words.has(d.id));
    await Promise.all(unknown.map(async (d) => {
      try {
        const full = await getJSON("/v1/decisions/" + encodeURIComponent(str(d.id)));
        if (typeof full.explanation === "string") words.set(d.id, full.explanation);
      } catch (err) {
        // Shown as "kind about subject" until a later poll learns them.
      }
    }));
  }

  function connection(tone, text) {
    const conn = document.getElementById("conn");
    if (!conn) return;
    conn.className = tone ? "tone-" + tone : "";
    conn.textContent = text;
  }

  async function poll() {
    try {
      const [doc, list] = await Promise.all([getJSON("/v1/status"), getJSON("/v1/decisions")]);
      const decisions = list.decisions || [];
      await learnWords(decisions.slice(-recent));
      render(doc, decisions);
      body.dataset.updated = new Date().toISOString();
      connection("", "· live");
    } catch (err) {
      connection("bad", "· the agent did not answer at " + atText(now()) + "; retrying");
    } finally {
      window.setTimeout(poll, POLL_MS);
    }
  }

  for (const row of document.querySelectorAll("#decisions tr[data-decision]")) {
    const cell = row.querySelector(".words");
    if (cell) words.set(row.dataset.decision, cell.textContent);
  }
  poll();
})();
