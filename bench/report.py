"""Print the stored results (``bench/results/*.json``) as Markdown.

    python -m bench.report [PATH ...]   # environment, command and tables of each run
    python -m bench.report --summary    # machine, the runs' conditions, the goals table, the memory-fix table
    python -m bench.report --check      # every stored result and the summary render (CI runs this)

``docs/benchmarks.md`` quotes this output; none of its tables is typed by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench._util import RESULTS

ORDER = ["overhead", "detection", "resume", "work_lost", "queue", "memory"]
EXTRA = ["overhead_ckpt", "job_end"]  # issue 13: checkpoint-bound rows and job end (summarised when present)


def render(path: Path) -> str:
    d = json.loads(path.read_text())
    env = d["environment"]
    v = env.get("versions", {})
    git = env.get("git") or {}
    vers = ", ".join(f"{k} {x}" for k, x in v.items() if x)
    out = [f"### {d['benchmark']} ({path.name})", "",
           f"`{env.get('command')}` - {env.get('date')}, {env.get('duration_s')} s; load average before "
           f"{env.get('load_before')}, after {env.get('load_after')}"
           + (f"; commit {str(git.get('commit'))[:10]}{' + uncommitted changes' if git.get('dirty') else ''}"
              if git else ""), "",
           f"{env.get('cpu')}, {env.get('cores')} cores, {env.get('mem_gib')} GiB; Python {env.get('python')}; {vers};"
           f" {env.get('redis_server')}", ""]
    busy = env.get("busy_processes_before") or []
    if busy:
        out += [f"Other processes at start: {len(busy)} (" + "; ".join(b.split(' ', 2)[-1][:60] for b in busy[:4])
                + ")", ""]
    for t in d["tables"]:
        out += ["```", t.strip("\n"), "```", ""]
    return "\n".join(out)


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _f(x: float, d: int = 2) -> str:
    return f"{x:.{d}f}"


def summary() -> str:
    """Machine, runs, goals and the memory fixes, from the full-run JSON files."""
    d = {n: _load(n) for n in ORDER}
    e = d["overhead"]["environment"]
    vers = ", ".join(f"{k} {x}" for k, x in e["versions"].items() if x)
    out = [f"- CPU: {e['cpu']} ({e['cores']} cores), {e['mem_gib']} GiB RAM (from /proc); {e['os']}",
           f"- Python {e['python']}; {vers}; {(e.get('redis_server') or '').split(' sha')[0]}", "",
           "| run | command | started (UTC) | duration | load avg before -> after (1/5/15 min) "
           "| other processes at start |",
           "|---|---|---|---|---|---|"]
    extra = {n: _load(n) for n in EXTRA if (RESULTS / f"{n}.json").exists()}
    for n in [*ORDER, *extra]:
        x = (d.get(n) or extra[n])["environment"]
        busy = [b for b in (x.get("busy_processes_before") or []) if f"bench.{n}" not in b]  # its own launcher
        shown = "none" if not busy else f"{len(busy)}: " + "; ".join(
            b.split(" ", 2)[-1].split("--")[0].rsplit("/bin/", 1)[-1][:45] for b in busy)
        out.append(f"| {n} | `{x['command'].strip()}` | {x['date'][:19].replace('T', ' ')} | {x['duration_s']:.0f} s | "
                   f"{x['load_before']} -> {x['load_after']} | {shown} |")
    ov, de, rs = d["overhead"]["results"], d["detection"]["results"], d["resume"]["results"]
    wl, q, me = d["work_lost"]["results"], d["queue"]["results"], d["memory"]["results"]
    sm, big = ov["small"], {r["variant"]: r for r in ov["big"]["rows"]}
    k, ti, tn = big["keras-every-epoch"]["stall_s"], big["traind-improving"]["stall_s"], big["traind-not-improving"][
        "stall_s"]
    dt, rq = de["traind"], de.get("rq", {})
    yes = lambda ok: "yes" if ok else "NO"  # noqa: E731
    out += ["", "| goal | measured | met |", "|---|---|---|",
            f"| overhead: traind end to end / plain `model.fit` <= 1.05 | {_f(sm['e2e_ratio'], 3)} "
            f"({_f(sm['rows'][0]['b_traind_s'])} s / {_f(sm['rows'][0]['a_keras_s'])} s) | "
            f"{yes(sm['e2e_ratio'] <= 1.05)} |",
            f"| overhead, 100 MB model: the asynchronous checkpoint stalls training less than Keras' synchronous save "
            f"| stall per epoch {_f(ti)} s (monitor improving) / {_f(tn)} s (not improving) vs Keras {_f(k)} s | "
            f"{yes(ti < k and tn < k)} |",
            f"| detection: p95 SIGKILL -> requeued <= lease_ttl_s + 1 s = {_f(dt['goal_p95_s'], 1)} s | "
            f"p50 {_f(dt['detect_s']['median'])} s, p95 {_f(dt['detect_s']['p95'])} s, max {_f(dt['detect_s']['max'])}"
            f" s ({dt['detect_s']['n']} kills); plain RQ ran it again after {rq.get('ran_again_after_s')} s | "
            f"{yes(dt['goal_met'])} |",
            f"| resume on an idle warm worker <= 2 s + model load ({_f(rs['model_load']['model_load_s'])} s) = "
            f"{_f(rs['goal_warm_s'])} s | median {_f(rs['summary'][0]['total_s'])} s, max "
            f"{_f(rs['summary'][0]['max_total_s'])} s (cold worker: median {_f(rs['summary'][1]['total_s'])} s) | "
            f"{yes(rs['goal_met'])} |",
            f"| memory: worker RSS growth over {me['jobs']} jobs <= a few MB (5) | {me['growth_mb']:+.1f} MB, "
            f"{me['slope_mb_per_job']:.3f} MB/job | {yes(me['growth_mb'] <= 5)} |",
            f"| work lost per kill (no goal) | epochs redone, mean: best {wl['summary'][0]['mean_epochs_redone']}, "
            f"latest {wl['summary'][1]['mean_epochs_redone']} | - |",
            f"| queue (no goal) | submit {q['submit']['rows'][0]['jobs_per_s']:.0f}/s, submit_many "
            f"{q['submit']['rows'][1]['jobs_per_s']:.0f}/s, RQ enqueue {q['submit']['rows'][2]['jobs_per_s']:.0f}/s | "
            "- |"]
    out += _issue13_goals(extra)
    rows = []
    for label, name in (("before (clear_session + gc only)", "memory.before-fixes"),
                        ("+ `_create_variables_eagerly` (worker/trainer.py)", "memory.fix1-only"),
                        ("+ `_drop_custom_gradients` (worker/runner.py)", "memory")):
        if not (RESULTS / f"{name}.json").exists():
            continue
        r = _load(name)["results"]
        a, b = r["samples"][0], r["samples"][-1]
        rows.append(f"| {label} | {a['job']} -> {b['job']} | {a['rss_mb']:.1f} -> {b['rss_mb']:.1f} MB "
                    f"({r['growth_mb']:+.1f} MB) | {r['slope_mb_per_job']:.3f} |")
    if rows:
        out += ["", "| worker code | jobs | RSS | trend (MB/job) |", "|---|---|---|---|", *rows]
    return "\n".join(out)


def _issue13_goals(extra: dict[str, dict]) -> list[str]:
    """Goal rows of the checkpoint-bound bench (bench.overhead --skip-big rows) and the job-end bench."""
    out: list[str] = []
    yes = lambda ok: "yes" if ok else "NO"  # noqa: E731
    if "overhead_ckpt" in extra:
        r = extra["overhead_ckpt"]
        load = r["environment"]["load_before"]
        for row in r["results"]["big"]["rows"]:
            if not row["variant"].startswith("traind"):
                continue
            sc, sk, ep, bg = row["stall_vs_copy"], row["stall_vs_keras"], row["epoch_vs_no_ckpt"], row["bg_vs_raw"]
            out.append(f"| checkpoint, {row['row']}, {row['variant']}: stall <= 1.2x host copy, <= 0.25x Keras; epoch "
                       f"<= 1.10x no-checkpoint; background write >= 0.8x raw (load {load[0]}) | stall "
                       f"{_f(row['stall_s'], 3)} s = {_f(sc)}x copy, {_f(sk)}x Keras; epoch {_f(ep)}x; write "
                       f"{_f(bg)}x raw; skipped {row['skipped']} | {yes(sc <= 1.2)} / {yes(sk <= 0.25)} / "
                       f"{yes(ep <= 1.10)} / {yes(bg is not None and bg >= 0.8)} |")
    if "job_end" in extra:
        for row in extra["job_end"]["results"]["rows"]:
            out.append(f"| job end ({row['worker']}): last epoch -> succeeded p95 <= 0.5 s over {row['jobs']} jobs, "
                       f"both cores busy | p50 {_f(row['p50_s'], 3)} s, p95 {_f(row['p95_s'], 3)} s, max "
                       f"{_f(row['max_s'], 3)} s (load1 median {row['load1_median']}) | {yes(row['goal_met'])} |")
    return out


def check() -> int:
    """Every stored result (``bench/results/*.json``, scratch ``*.smoke.json`` aside) renders, and so does the
    summary: a result file a benchmark change left unreadable fails CI."""
    bad = []
    for p in sorted(RESULTS.glob("*.json")):
        if p.name.endswith(".smoke.json"):
            continue  # git-ignored scratch
        try:
            render(p)
        except Exception as e:  # noqa: BLE001 - reported
            bad.append(f"{p.name}: {type(e).__name__}: {e}")
    try:
        summary()
    except Exception as e:  # noqa: BLE001 - reported
        bad.append(f"--summary: {type(e).__name__}: {e}")
    for b in bad:
        print(b, file=sys.stderr)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--summary"]:
        print(summary())
        return 0
    if args == ["--check"]:
        return check()
    paths = [Path(a) for a in args] or [RESULTS / f"{n}.json" for n in ORDER if (RESULTS / f"{n}.json").exists()]
    for p in paths:
        print(render(p))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
