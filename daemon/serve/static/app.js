/* traind dashboard: jobs list, job page (live curves, events, checkpoints), workers. No dependencies. */
"use strict";
(function () {
  const $ = s => document.querySelector(s);
  const view = $("#view");
  // The token lives in this tab's session storage: gone when the tab closes, never written to disk. Earlier versions
  // kept it in local storage; that copy is removed.
  localStorage.removeItem("traind.token");
  let token = sessionStorage.getItem("traind.token") || "";
  let current = null; // {abort: AbortController} of the open view
  let me = null; // {name, role} of the token (GET /api/v1/whoami): which actions to offer; the server enforces them

  function esc(s) {
    return String(s === null || s === undefined ? "" : s).replace(/[&<>"']/g,
      c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }
  function age(ms) {
    if (!ms) return "–";
    const s = Math.max(0, (Date.now() - ms) / 1000);
    if (s < 60) return `${Math.floor(s)}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m`;
    if (s < 86400) return `${Math.floor(s / 3600)}h${Math.floor(s % 3600 / 60)}m`;
    return `${Math.floor(s / 86400)}d`;
  }
  function when(ms) { return ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "–"; }
  function stateBadge(s) { return `<span class="state ${esc(s)}" data-state="${esc(s)}">${esc(s)}</span>`; }
  function best(j) {
    if (j.best_value === null || j.best_value === undefined) return "–";
    return `${esc(j.monitor || "val_loss")}=${esc(fmtNum(+j.best_value))} @ ${esc(j.best_epoch)}`;
  }

  class AuthError extends Error {}

  async function api(path, opts) {
    const resp = await fetch(path, Object.assign({}, opts, { headers: { Authorization: `Bearer ${token}` } }));
    if (resp.status === 401) throw new AuthError((await resp.json()).detail);
    if (!resp.ok) throw new Error(`${resp.status}: ${JSON.stringify((await resp.json()).detail)}`);
    return resp.json();
  }

  function setLive(on) {
    const l = $("#live");
    l.className = "live " + (on ? "on" : "off");
    l.textContent = on ? "live" : "offline";
  }

  /* Server-Sent Events over fetch (EventSource cannot send an Authorization header). Reconnects until aborted. */
  async function sse(path, onEvent, signal) {
    let lastId = null; // sent back on a reconnect (Last-Event-ID): the snapshot then skips the events we have
    while (!signal.aborted) {
      try {
        const headers = { Authorization: `Bearer ${token}` };
        if (lastId !== null) headers["Last-Event-ID"] = lastId;
        const resp = await fetch(path, { headers, signal });
        if (resp.status === 401) { showLogin("token refused"); return; }
        if (!resp.ok) throw new Error(String(resp.status));
        setLive(true);
        const reader = resp.body.getReader(), dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, i); buf = buf.slice(i + 2);
            let ev = "message", data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("id: ")) lastId = line.slice(4);
              else if (line.startsWith("event: ")) ev = line.slice(7);
              else if (line.startsWith("data: ")) data += line.slice(6);
            }
            if (data) onEvent(ev, JSON.parse(data));
          }
        }
      } catch (e) {
        if (signal.aborted) return;
      }
      setLive(false);
      await new Promise(r => setTimeout(r, 2000));
      onEvent("resync", {});
    }
  }

  // -- jobs list ---------------------------------------------------------------------------------------------------
  const listState = { state: "", name: "", owner: "", offset: 0, limit: 50 };

  function jobRow(j) {
    return `<tr data-job="${esc(j.id)}"><td><a href="#/job/${esc(j.id)}">${esc(j.id)}</a></td><td>${esc(j.name)}</td>
      <td class="owner">${esc(j.owner || "–")}</td><td>${stateBadge(j.state)}</td><td class="num epoch">${esc(j.epoch)}/${esc(j.epochs)}</td>
      <td class="num best">${best(j)}</td><td class="num">${esc(j.restarts)}</td><td>${esc(j.worker || "–")}</td>
      <td class="num" data-created="${esc(j.created_at)}">${age(j.created_at)}</td></tr>`;
  }

  async function showJobs(signal) {
    view.innerHTML = `<div class="filters">
      <select id="f-state"><option value="">all states</option>${["queued", "running", "requeued", "succeeded",
        "failed", "cancelled"].map(s => `<option ${s === listState.state ? "selected" : ""}>${s}</option>`).join("")}
      </select><input id="f-name" placeholder="name contains" value="${esc(listState.name)}">
      <input id="f-owner" placeholder="owner" value="${esc(listState.owner)}"></div>
      <table id="jobs"><thead><tr><th>id</th><th>name</th><th>owner</th><th>state</th><th>epoch</th><th>best @ epoch</th>
      <th>restarts</th><th>worker</th><th>age</th></tr></thead><tbody></tbody></table>
      <div class="pager"><button id="prev">‹ newer</button><span id="count"></span><button id="next">older ›</button></div>`;
    let timer = null;
    const load = async () => {
      const q = new URLSearchParams({ limit: listState.limit, offset: listState.offset });
      if (listState.state) q.set("state", listState.state);
      if (listState.name) q.set("name", listState.name);
      if (listState.owner) q.set("owner", listState.owner);
      const page = await api(`/api/v1/jobs?${q}`);
      $("#jobs tbody").innerHTML = page.items.map(jobRow).join("") ||
        `<tr><td colspan="9">no jobs</td></tr>`;
      $("#count").textContent = `${page.total ? page.offset + 1 : 0}–${page.offset + page.items.length} of ${page.total}${page.exact === false ? "+" : ""}`;
    };
    const reloadSoon = () => { if (!timer) timer = setTimeout(() => { timer = null; load().catch(onError); }, 300); };
    $("#f-state").onchange = e => { listState.state = e.target.value; listState.offset = 0; load().catch(onError); };
    $("#f-name").oninput = e => { listState.name = e.target.value; listState.offset = 0; reloadSoon(); };
    $("#f-owner").oninput = e => { listState.owner = e.target.value.trim(); listState.offset = 0; reloadSoon(); };
    $("#prev").onclick = () => { listState.offset = Math.max(0, listState.offset - listState.limit); load().catch(onError); };
    $("#next").onclick = () => { listState.offset += listState.limit; load().catch(onError); };
    await load();
    sse("/api/v1/stream", (ev, j) => {
      if (ev === "resync") return reloadSoon();
      if (ev !== "job") return;
      const row = view.querySelector(`tr[data-job="${CSS.escape(j.id)}"]`);
      const fits = (!listState.state || j.state === listState.state) && (!listState.owner || j.owner === listState.owner);
      if (row && fits) row.outerHTML = jobRow(j);
      else reloadSoon(); // new job, or it left the filtered state
    }, signal);
  }

  // -- one job -----------------------------------------------------------------------------------------------------
  function chartGroups(history) {
    const keys = new Set();
    history.forEach(h => Object.keys(h).forEach(k => { if (k !== "epoch" && k !== "time_s") keys.add(k); }));
    const groups = { loss: ["loss", "val_loss"].filter(k => keys.has(k)) };
    if (keys.has("learning_rate")) groups["learning rate"] = ["learning_rate"];
    [...keys].filter(k => !k.startsWith("val_") && !["loss", "learning_rate"].includes(k)).sort().forEach(k => {
      groups[k] = [k, "val_" + k].filter(x => keys.has(x));
    });
    [...keys].filter(k => k.startsWith("val_") && !keys.has(k.slice(4)) && k !== "val_loss").forEach(k => {
      groups[k] = [k];
    });
    if (!groups.loss.length) delete groups.loss;
    return groups;
  }

  async function showJob(id, signal) {
    view.innerHTML = `<h2 id="job-title">${esc(id)}</h2>
      <div class="grid"><div class="card"><h3>status</h3><dl class="kv" id="kv"></dl>
        <p><button id="cancel">cancel</button> <button id="retry">retry</button> <span id="action-msg"></span></p></div>
        <div class="card"><h3>checkpoints</h3><div id="ckpts"></div></div></div>
      <div class="grid" id="charts"></div>
      <div class="card"><h3>events</h3><div class="events" id="events"></div></div>`;
    const history = new Map(); // epoch -> entry (a redone epoch replaces its entry, as in Redis)
    const charts = {};
    let events = [], seen = new Set(), lastAttempt = null, lastEpoch = null;

    const drawCharts = () => {
      const hist = [...history.values()].sort((a, b) => a.epoch - b.epoch);
      const groups = chartGroups(hist);
      for (const [title, names] of Object.entries(groups)) {
        if (!charts[title]) {
          const card = document.createElement("div");
          card.className = "card";
          card.dataset.chart = title;
          card.innerHTML = `<h3>${esc(title)}</h3>`;
          const holder = document.createElement("div");
          card.appendChild(holder);
          $("#charts").appendChild(card);
          charts[title] = new LineChart(holder, { title });
        }
        const series = {};
        names.forEach(n => { series[n] = hist.filter(h => h[n] !== undefined && h[n] !== null).map(h => [h.epoch, +h[n]]); });
        charts[title].update(series);
      }
      if (!Object.keys(groups).length && !charts._empty) {
        charts._empty = true;
        $("#charts").innerHTML = `<div class="card" data-chart="loss"><h3>loss</h3><p>waiting for the first epoch</p></div>`;
      } else if (Object.keys(groups).length && charts._empty) {
        charts._empty = false;
        const ph = $("#charts").querySelector('[data-chart="loss"] p'); if (ph) ph.parentNode.remove();
      }
    };
    // Where the job's wall time went (issue 19): productive share, then the lost parts, largest first.
    const goodputText = g => {
      const lost = ["queued", "starting", "checkpoint", "redone", "detection", "restart"]
        .map(k => [k, g[`${k}_s`] || 0]).filter(([, v]) => v >= 0.5).sort((a, b) => b[1] - a[1])
        .map(([k, v]) => `${k} ${esc(v.toFixed(1))} s`).join(", ");
      return `${esc((100 * g.ratio).toFixed(1))}% productive of ${esc(g.wall_s.toFixed(0))} s` + (lost ? `; lost: ${lost}` : "");
    };
    const renderStatus = st => {
      const rows = [["state", stateBadge(st.state)], ["epoch", `<span id="kv-epoch">${esc(st.epoch)}/${esc(st.epochs)}</span>`],
        ["best", `<span id="kv-best">${st.best_value === null || st.best_value === undefined ? "–" :
          `${esc(st.monitor || "val_loss")}=${esc(fmtNum(+st.best_value))} @ epoch ${esc(st.best_epoch)}`}</span>`],
        ["attempt", esc(st.attempt)], ["restarts", `<span id="kv-restarts">${esc(st.restarts)}</span>`],
        ["preemptions", esc(st.preemptions)], ["worker", esc(st.worker || "–")], ["queue", esc(st.queue)],
        ["owner", esc(st.owner || "–")],
        ["name", esc(st.name)], ["created", when(st.created_at)], ["started", when(st.started_at)],
        ["finished", when(st.finished_at)]];
      if (st.goodput && st.goodput.wall_s) rows.push(["goodput", goodputText(st.goodput)]);
      if (st.stopped_early) rows.push(["stopped early", "yes"]);
      if (st.error) rows.push(["error", `<span class="error">${esc(st.error)}</span>`]);
      if (st.note) rows.push(["note", `<span id="kv-note">${esc(st.note)}</span>`]);
      // issue 24: why a queued job waits and where it stands (jobs/ops/waiting.py)
      if (st.waiting && st.waiting.message && st.waiting.message !== st.note)
        rows.push(["waiting", `<span id="kv-waiting" data-kind="${esc(st.waiting.kind)}">${esc(st.waiting.message)}</span>`]);
      $("#kv").innerHTML = rows.map(([k, v]) => `<dt>${k}</dt><dd data-field="${k}">${v}</dd>`).join("");
      $("#kv").dataset.state = st.state;
      // only the actions the state allows: cancel while it may still run, retry once it failed or was cancelled;
      // and only to a token that may: admin, or submit on its own jobs (a read token never)
      const mayAct = !!me && (me.role === "admin" || (me.role === "submit" && st.owner === me.name));
      $("#cancel").hidden = !mayAct || !["queued", "requeued", "running"].includes(st.state);
      $("#retry").hidden = !mayAct || !["failed", "cancelled"].includes(st.state);
    };
    const addEvents = evs => {
      for (const e of evs) {
        const key = `${e.ts}|${e.msg}`;
        if (seen.has(key)) continue;
        seen.add(key); events.push(e);
      }
      events.sort((a, b) => a.ts - b.ts);
      const box = $("#events"), atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
      box.innerHTML = events.map(e => `<div class="${esc(e.level)}">${when(e.ts)} ${esc(e.msg)}</div>`).join("");
      if (atBottom) box.scrollTop = box.scrollHeight;
    };
    const loadCkpts = async () => {
      if (signal.aborted) return; // the user left this page
      const list = await api(`/api/v1/jobs/${encodeURIComponent(id)}/checkpoints`);
      if (signal.aborted) return;
      $("#ckpts").innerHTML = list.length ? `<table><thead><tr><th>epoch</th><th>batch</th><th>attempt</th><th>file</th>
        <th>bytes</th></tr></thead><tbody>${list.map(m => `<tr><td class="num">${esc(m.epoch)}</td><td class="num">${esc(m.batch)}</td>
        <td class="num">${esc(m.attempt)}</td><td>${esc(m.file)}</td><td class="num">${esc(m.size)}</td></tr>`).join("")}
        </tbody></table>` : "none yet";
    };
    let ckptTimer = null;
    const ckptsSoon = () => {
      if (!ckptTimer) ckptTimer = setTimeout(() => { ckptTimer = null; loadCkpts().catch(onError); }, 2000);
    };
    const reload = async () => {
      const st = await api(`/api/v1/jobs/${encodeURIComponent(id)}`);
      history.clear(); (st.history || []).forEach(h => history.set(h.epoch, h));
      renderStatus(st); drawCharts();
      addEvents(await api(`/api/v1/jobs/${encodeURIComponent(id)}/events?start=-500`));
      lastAttempt = st.attempt; lastEpoch = st.epoch;
      loadCkpts().catch(onError);
    };
    // A waiting job changes nothing in Redis, so no event comes: re-read it to show (or drop) the no-worker note.
    const waitTimer = setInterval(() => {
      if (signal.aborted) { clearInterval(waitTimer); return; }
      if (["queued", "requeued"].includes($("#kv").dataset.state))
        api(`/api/v1/jobs/${encodeURIComponent(id)}?history=false`).then(st => {
          if (!signal.aborted && ["queued", "requeued"].includes(st.state)) renderStatus(st);
        }).catch(() => {});
    }, 3000);
    $("#cancel").onclick = () => api(`/api/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" })
      .then(r => { $("#action-msg").textContent = "cancel requested"; }).catch(e => { $("#action-msg").textContent = e.message; });
    $("#retry").onclick = () => api(`/api/v1/jobs/${encodeURIComponent(id)}/retry`, { method: "POST" })
      .then(r => { $("#action-msg").textContent = `retrying as attempt ${r.attempt}`; }).catch(e => { $("#action-msg").textContent = e.message; });
    sse(`/api/v1/jobs/${encodeURIComponent(id)}/stream`, (ev, d) => {
      if (ev === "snapshot") {
        history.clear(); (d.history || []).forEach(h => history.set(h.epoch, h));
        renderStatus(d); drawCharts(); addEvents(d.events || []);
        lastAttempt = d.attempt; lastEpoch = d.epoch; loadCkpts().catch(onError);
      } else if (ev === "status") {
        if (lastAttempt !== null && d.attempt !== lastAttempt) { reload().catch(onError); return; } // resumed: history may be trimmed
        renderStatus(d);
        ckptsSoon(); // a checkpoint commits after its epoch's status: re-read the list, at most every 2 s
        lastEpoch = d.epoch;
      } else if (ev === "epoch") {
        d.forEach(h => history.set(h.epoch, h)); drawCharts();
      } else if (ev === "events") {
        addEvents(d);
      } else if (ev === "resync") {
        reload().catch(onError);
      }
    }, signal);
  }

  // -- workers -----------------------------------------------------------------------------------------------------
  async function showWorkers(signal) {
    view.innerHTML = `<table id="workers"><thead><tr><th>worker</th><th>host</th><th>device</th><th>current job</th>
      <th>cpu %</th><th>rss MiB</th><th>gpu MiB</th><th>last heartbeat</th><th>jobs done</th></tr></thead><tbody></tbody></table>
      <p class="muted">Refreshed every 2 s from the worker registry.</p>`;
    const load = async () => {
      const ws = await api("/api/v1/workers");
      $("#workers tbody").innerHTML = ws.map(w => `<tr data-worker="${esc(w.id)}"><td>${esc(w.id)}</td><td>${esc(w.host)}</td>
        <td>${esc(w.device)}</td><td>${w.job ? `<a href="#/job/${esc(w.job)}">${esc(w.job)}</a>` : (w.drained ? "drained" : "idle")}</td>
        <td class="num">${esc(w.cpu_percent)}</td><td class="num">${esc(w.rss_mb)}</td>
        <td class="num">${w.gpu_mem_mb === null ? "–" : esc(w.gpu_mem_mb)}</td>
        <td class="num">${esc(w.heartbeat_age_s)} s ago</td><td class="num">${esc(w.jobs_done)}</td></tr>`).join("") ||
        `<tr><td colspan="9">no workers registered</td></tr>`;
    };
    await load();
    setLive(true);
    const t = setInterval(() => load().catch(onError), 2000);
    signal.addEventListener("abort", () => clearInterval(t));
  }

  // -- routing -----------------------------------------------------------------------------------------------------
  function onError(e) {
    if (e instanceof AuthError) return showLogin(e.message);
    view.insertAdjacentHTML("afterbegin", `<p class="error">${esc(e.message)}</p>`);
  }

  function showLogin(msg) {
    if (current) current.abort();
    view.innerHTML = "";
    $("#login").hidden = false;
    $("#login-error").textContent = msg || "";
    $("#logout").hidden = true;
    me = null;
    $("#whoami").hidden = true;
  }

  async function whoami() {
    if (me) return me;
    me = await api("/api/v1/whoami");
    $("#whoami").textContent = `${me.name} (${me.role})`;
    $("#whoami").dataset.role = me.role;
    $("#whoami").hidden = false;
    return me;
  }

  function route() {
    if (current) current.abort();
    if (!token) return showLogin();
    $("#login").hidden = true;
    $("#logout").hidden = false;
    const ctl = current = new AbortController();
    whoami().then(() => { if (ctl === current) go(ctl.signal); }).catch(onError);
  }

  function go(signal) {
    const h = location.hash || "#/";
    document.querySelectorAll("header nav a").forEach(a => a.classList.remove("active"));
    let m;
    if ((m = h.match(/^#\/job\/([A-Za-z0-9_-]+)$/))) { $("#nav-jobs").classList.add("active"); showJob(m[1], signal).catch(onError); }
    else if (h === "#/workers") { $("#nav-workers").classList.add("active"); showWorkers(signal).catch(onError); }
    else { $("#nav-jobs").classList.add("active"); showJobs(signal).catch(onError); }
  }

  $("#login").onsubmit = e => {
    e.preventDefault();
    token = $("#token").value.trim();
    sessionStorage.setItem("traind.token", token);
    route();
  };
  $("#logout").onclick = () => { sessionStorage.removeItem("traind.token"); token = ""; showLogin(); };
  window.addEventListener("hashchange", route);
  route();
})();
