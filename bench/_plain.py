"""A warm plain-Keras process for ``bench.overhead``: reads one JSON request per line on stdin, runs
``bench.overhead.plain_fit(**request)`` and answers one JSON line on stdout (``{"ready": true}`` first).

It gives the plain ``model.fit`` side the same conditions as a warm traind worker: its own process, TensorFlow
imported and one untimed fit run before any timed one.
"""

from __future__ import annotations

import json
import os
import sys


def serve() -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = sys.stdout
    sys.stdout = sys.stderr  # anything else printed must not corrupt the protocol
    from bench.overhead import plain_fit

    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            res = {"ok": True, "result": plain_fit(**json.loads(line))}
        except Exception as e:  # reported to the driver
            res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(res) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(serve())
