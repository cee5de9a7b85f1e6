/* traind dashboard, sweeps: the list, and one sweep (trials table, best so far over time, each trial's objective
   per epoch). Polls the API every 2 s; the token is the main dashboard's (this tab's session storage). No dependencies. */
"use strict";
(function () {
  const $ = s => document.querySelector(s);
  const view = $("#view");
  const token = sessionStorage.getItem("traind.token") || "";  // where the main dashboard keeps it (this tab only)
  const NS = "http://www.w3.org/2000/svg";
  let timer = null;

  function esc(s) {
    return String(s === null || s === undefined ? "" : s).replace(/[&<>"']/g,
      c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }
  const num = v => window.fmtNum(v);
  const badge = s => `<span class="state ${esc(s)}" data-state="${esc(s)}">${esc(s)}</span>`;
  const params = p => Object.entries(p || {}).map(([k, v]) => `${esc(k.split(".").pop())}=${esc(num(v) === "–" ? v : (typeof v === "number" ? num(v) : v))}`).join(" ");

  async function api(path) {
    const resp = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
    if (!resp.ok) throw new Error(`${resp.status}: ${JSON.stringify((await resp.json()).detail)}`);
    return resp.json();
  }
  function live(on) { const l = $("#live"); l.className = "live " + (on ? "on" : "off"); l.textContent = on ? "live" : "offline"; }

  async function showList() {
    const rows = await api("/api/v1/sweeps");
    view.innerHTML = `<table id="sweeps"><thead><tr><th>id</th><th>name</th><th>state</th><th>trials done</th>
      <th>objective</th><th>best</th></tr></thead><tbody>${rows.map(s => `<tr data-sweep="${esc(s.id)}">
      <td><a href="#/sweep/${esc(s.id)}">${esc(s.id)}</a></td><td>${esc(s.name)}</td><td>${badge(s.state)}</td>
      <td class="num">${esc(s.trials_done)}/${esc(s.trials_total)}</td><td>${esc(s.direction)} ${esc(s.metric)}</td>
      <td class="num">${s.best ? num(s.best.value) : "–"}</td></tr>`).join("") || `<tr><td colspan="6">no sweeps</td></tr>`}
      </tbody></table>`;
  }

  /* Best so far against minutes since the sweep started, as steps. */
  function steps(svg, pts, created) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const W = 600, H = 220, L = 56, R = 12, T = 10, B = 28;
    const el = (n, a) => { const e = document.createElementNS(NS, n); for (const k in a) e.setAttribute(k, a[k]); svg.appendChild(e); return e; };
    if (!pts.length) { el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#687380" }).textContent = "no finished trial yet"; return; }
    const xs = pts.map(p => (p.t - created) / 60000), ys = pts.map(p => p.value);
    const x1 = Math.max(...xs) * 1.05 || 1;
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (y0 === y1) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    const sx = v => L + v / x1 * (W - L - R), sy = v => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
    let d = "";
    pts.forEach((p, i) => { d += (i ? ` H${sx(xs[i])} V${sy(ys[i])}` : `M${sx(xs[i])},${sy(ys[i])}`); });
    d += ` H${W - R}`;
    el("path", { d, fill: "none", stroke: "#059669", "stroke-width": 2 });
    pts.forEach((p, i) => {
      const c = el("circle", { cx: sx(xs[i]), cy: sy(ys[i]), r: 4, fill: "#059669", "data-trial": p.number, class: "best-pt" });
      const t = document.createElementNS(NS, "title"); t.textContent = `trial ${p.number}: ${num(p.value)}`; c.appendChild(t);
    });
    [y0, y1].forEach(v => { el("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end", fill: "#687380", "font-size": 11 }).textContent = num(v); });
    el("text", { x: W - R, y: H - 4, "text-anchor": "end", fill: "#687380", "font-size": 11 }).textContent = `minutes since start (0–${x1.toFixed(1)})`;
  }

  async function showSweep(id, chart) {
    const s = await api(`/api/v1/sweeps/${encodeURIComponent(id)}`);
    if (!$("#sweep")) {
      view.innerHTML = `<h2 id="sweep"></h2><div class="grid">
        <div class="card"><h3>sweep</h3><dl class="kv" id="kv"></dl></div>
        <div class="card"><h3>best so far</h3><svg class="steps" id="best-chart" viewBox="0 0 600 220" preserveAspectRatio="none"></svg></div>
        <div class="card"><h3>objective per epoch, by trial</h3><div id="curves"></div></div></div>
        <table id="trials"><thead><tr><th>trial</th><th>job</th><th>state</th><th>value</th><th>epochs done</th>
        <th>restarts</th><th>params</th></tr></thead><tbody></tbody></table>`;
      chart.c = new window.LineChart($("#curves"), {});
    }
    $("#sweep").textContent = `${s.name} (${s.id})`;
    $("#kv").setAttribute("data-state", s.state);
    $("#kv").innerHTML = `<dt>state</dt><dd id="kv-state">${badge(s.state)}</dd>
      <dt>objective</dt><dd>${esc(s.direction)} ${esc(s.metric)}</dd>
      <dt>trials</dt><dd id="kv-trials">${s.trials.length}/${esc(s.trials_total)} (${esc(s.parallel)} in parallel)</dd>
      <dt>by state</dt><dd>${Object.entries(s.counts).map(([k, n]) => `${n} ${esc(k)}`).join(", ") || "–"}</dd>
      <dt>best</dt><dd id="kv-best">${s.best ? `trial ${esc(s.best.number)}: ${num(s.best.value)} ${params(s.best.params)}` : "–"}</dd>
      <dt>Optuna study</dt><dd><code>${esc(s.study.name)}</code></dd>`;
    const bestN = s.best ? s.best.number : -1;
    $("#trials tbody").innerHTML = s.trials.map(t => `<tr data-trial="${esc(t.number)}" class="${t.number === bestN ? "best-row" : ""}">
      <td>${esc(t.number)}</td><td><a href="/#/job/${esc(t.job)}">${esc(t.job)}</a></td><td>${badge(t.state)}</td>
      <td class="num">${num(t.value)}</td><td class="num">${esc(t.epochs_done)}/${esc(t.epochs)}${t.pruned ? ` (pruned @${esc(t.pruned_at)})` : ""}</td>
      <td class="num">${esc(t.restarts)}</td><td>${params(t.params)}</td></tr>`).join("");
    steps($("#best-chart"), s.best_over_time, s.created_at);
    const series = {};
    await Promise.all(s.trials.filter(t => t.job).map(async t => {
      const h = await api(`/api/v1/jobs/${encodeURIComponent(t.job)}/history`).catch(() => []);
      series[`trial ${t.number}`] = h.filter(e => typeof e[s.metric] === "number").map(e => [e.epoch, e[s.metric]]);
    }));
    chart.c.update(series);
    // Each trial's curve links to its job page: its legend entry becomes the link (the chart sorts series by name).
    const jobs = Object.fromEntries(s.trials.map(t => [`trial ${t.number}`, t.job]));
    $("#curves .legend").querySelectorAll("span").forEach((span, i) => {
      const name = Object.keys(series).sort()[i], job = jobs[name];
      if (!job) return;
      const a = document.createElement("a");
      a.href = `/#/job/${encodeURIComponent(job)}`;
      a.setAttribute("data-curve", name);
      span.parentNode.replaceChild(a, span);
      a.appendChild(span);
    });
    return s.state !== "running";
  }

  function route() {
    if (timer) clearTimeout(timer);
    if (!token) { $("#login").hidden = false; return; }
    const m = (location.hash || "#/").match(/^#\/sweep\/([A-Za-z0-9]+)$/);
    view.innerHTML = "";
    const chart = {};
    const tick = async () => {
      try {
        const done = m ? await showSweep(m[1], chart) : (await showList(), false);
        live(true);
        if (!done) timer = setTimeout(tick, 2000);
      } catch (e) {
        live(false);
        view.insertAdjacentHTML("afterbegin", `<p class="error">${esc(e.message)}</p>`);
        timer = setTimeout(tick, 5000);
      }
    };
    tick();
  }
  window.addEventListener("hashchange", route);
  route();
})();
