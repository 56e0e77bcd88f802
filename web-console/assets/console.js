// unbrick console: live updates over server-sent events, select-all, CSV file import.
// No framework, no external resources: the console must work on an isolated recovery LAN.
"use strict";
(function () {
  const $ = (s, el) => (el || document).querySelector(s);
  const $$ = (s, el) => Array.from((el || document).querySelectorAll(s));
  const live = $("#live");
  const dash = $('[data-page="dashboard"]');
  const hostPage = $('[data-page="host"]');

  function setLive(on, text) {
    if (!live) return;
    live.textContent = text;
    live.classList.toggle("off", !on);
  }

  let summaryTimer = null;
  function refreshSummary() {
    if (!dash || summaryTimer) return;
    summaryTimer = setTimeout(async () => {
      summaryTimer = null;
      try {
        const r = await fetch("/api/v1/summary", { headers: { Accept: "application/json" } });
        if (!r.ok) return;
        const s = await r.json();
        for (const [state, n] of Object.entries(s.by_state)) {
          const el = $(`[data-count="${state}"]`);
          if (el) {
            el.textContent = n;
            el.closest("li").classList.toggle("zero", n === 0);
          }
        }
        $("#done-count").textContent = s.done;
        $("#total-count").textContent = s.total;
        $("#attention-count").textContent = s.attention;
        $("#progress-pct").textContent = s.progress_percent;
        $("#progress-bar").style.width = s.progress_percent + "%";
      } catch (e) { /* the next change retries */ }
    }, 300);
  }

  // The chart and the wave bars are drawn on the server: every 15 s the dashboard fetches
  // itself and takes the new ones.
  const glance = $("#glance");
  if (dash && glance && window.DOMParser) {
    setInterval(async () => {
      try {
        const r = await fetch(location.pathname + location.search, { headers: { Accept: "text/html" } });
        if (!r.ok) return;
        const doc = new DOMParser().parseFromString(await r.text(), "text/html");
        const fresh = doc.getElementById("glance");
        if (fresh) glance.replaceChildren(...Array.from(fresh.childNodes));
      } catch (e) { /* the next round retries */ }
    }, 15000);
  }

  function fmtTime(ms) {
    const d = new Date(ms).toISOString();
    return d.slice(0, 19) + "Z";
  }

  function onChange(c) {
    if (dash) {
      const row = $(`tr[data-mac="${c.mac}"]`);
      if (row) {
        if (c.state === "forgotten") {
          row.remove();
        } else {
          const st = $("[data-state]", row);
          if (st.textContent !== c.state) {
            st.textContent = c.state;
            st.className = "state st-" + c.state;
            row.classList.add("flash-row");
            setTimeout(() => row.classList.remove("flash-row"), 1500);
          }
          let rs = $("[data-reason]", row);
          if (c.reason) {
            if (!rs) {
              rs = document.createElement("span");
              rs.className = "reason";
              rs.setAttribute("data-reason", "");
              st.after(" ", rs);
            }
            rs.textContent = c.reason;
          } else if (rs) {
            rs.remove();
          }
        }
      }
      refreshSummary();
    }
    if (hostPage && hostPage.dataset.mac === c.mac) {
      if (c.state === "forgotten") { location.href = "/"; return; }
      const st = $("#host-state");
      st.textContent = c.state;
      st.className = "state st-" + c.state;
      $("#host-reason").textContent = c.reason || "";
      if (c.event) {
        const li = document.createElement("li");
        li.className = "src-" + c.event.source + " new";
        const t = document.createElement("time");
        t.className = "mono";
        t.textContent = fmtTime(c.event.time_ms);
        const src = document.createElement("span");
        src.className = "src";
        src.textContent = c.event.source;
        const kind = document.createElement("span");
        kind.className = "kind";
        kind.textContent = c.event.kind;
        li.append(t, " ", src, " ", kind, " ", c.event.message);
        $("#timeline").append(li);
      }
    }
  }

  if ((dash || hostPage) && window.EventSource) {
    const es = new EventSource("/api/v1/events");
    es.addEventListener("hello", () => setLive(true, "live"));
    es.addEventListener("change", (m) => { setLive(true, "live"); onChange(JSON.parse(m.data)); });
    es.addEventListener("resync", () => { if (hostPage) location.reload(); else refreshSummary(); });
    es.onerror = () => setLive(false, "reconnecting");
  }

  // Bulk selection.
  const all = $("#select-all");
  const count = $("#selected-count");
  function updateCount() {
    if (count) count.textContent = $$('#hosts tbody input[name="mac"]:checked').length;
  }
  if (all) {
    all.addEventListener("change", () => {
      $$('#hosts tbody input[name="mac"]').forEach((b) => { b.checked = all.checked; });
      updateCount();
    });
    $$('#hosts tbody input[name="mac"]').forEach((b) => b.addEventListener("change", updateCount));
  }
  const bulk = $("#bulk");
  if (bulk) {
    bulk.addEventListener("submit", (e) => {
      const n = $$('#hosts tbody input[name="mac"]:checked').length;
      const action = $("#bulk-action").value;
      if (n === 0) { e.preventDefault(); alert("Select at least one host."); return; }
      if (action === "forget" && !confirm(`Forget ${n} host(s) and their history?`)) e.preventDefault();
    });
  }

  // CSV imports: read the chosen file into the form's text box (data-into names it).
  document.querySelectorAll("input[type=file][data-into]").forEach((file) => {
    file.addEventListener("change", () => {
      const f = file.files[0];
      if (!f) return;
      f.text().then((t) => { $(file.dataset.into).value = t; });
    });
  });
  // Revealing a recovery key is audited: ask first.
  document.querySelectorAll("form.reveal").forEach((f) => {
    f.addEventListener("submit", (e) => {
      if (!confirm("Show this recovery key? The reveal is written to the audit log.")) e.preventDefault();
    });
  });
})();
