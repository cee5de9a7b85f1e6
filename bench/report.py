"""Print the stored results (``bench/results/*.json``) as Markdown: environment, command and tables of each run.

    python -m bench.report [PATH ...]

``docs/benchmarks.md`` quotes this output; nothing in it is typed by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench._util import RESULTS

ORDER = ["overhead", "detection", "resume", "work_lost", "queue", "memory"]


def render(path: Path) -> str:
    d = json.loads(path.read_text())
    env = d["environment"]
    v = env.get("versions", {})
    vers = ", ".join(f"{k} {x}" for k, x in v.items() if x)
    out = [f"### {d['benchmark']} ({path.name})", "",
           f"`{env.get('command')}` - {env.get('date')}, {env.get('duration_s')} s; load average before "
           f"{env.get('load_before')}, after {env.get('load_after')}", "",
           f"{env.get('cpu')}, {env.get('cores')} cores, {env.get('mem_gib')} GiB; Python {env.get('python')}; {vers};"
           f" {env.get('redis_server')}", ""]
    busy = env.get("busy_processes_before") or []
    if busy:
        out += [f"Other processes at start: {len(busy)} (" + "; ".join(b.split(' ', 2)[-1][:60] for b in busy[:4])
                + ")", ""]
    for t in d["tables"]:
        out += ["```", t.strip("\n"), "```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    paths = [Path(a) for a in args] or [RESULTS / f"{n}.json" for n in ORDER if (RESULTS / f"{n}.json").exists()]
    for p in paths:
        print(render(p))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
