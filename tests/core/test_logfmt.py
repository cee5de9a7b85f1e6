"""``TRAIND_LOG_FORMAT=json``: every line on stderr is one JSON object, including what native code (TensorFlow's
C++ start-up lines) writes straight to file descriptor 2 while TensorFlow is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = r"""
import logging, os, sys
from jobs import logfmt
logging.basicConfig(level=logging.INFO)
logfmt.apply_from_env()
with logfmt.native_stderr_logged():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"I0000 00:00:1795858902.736928     565 port.cc:153] oneDNN custom operations are on.\n")
    os.write(2, b"  a continuation line\n")
    os.write(2, b"E0000 00:00:1.0 1 x.cc:1] an error\n")
    logging.getLogger("traind.worker").info("traind's own line meanwhile")
logging.getLogger("traind.worker").info("after")
"""


def _run(env: dict[str, str]) -> list[str]:
    p = subprocess.run([sys.executable, "-c", CHILD], env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stderr.splitlines()


def test_native_stderr_lines_become_json_records() -> None:
    lines = _run({"TRAIND_LOG_FORMAT": "json", "TF_CPP_MIN_LOG_LEVEL": "0"})
    recs = [json.loads(x) for x in lines]  # every line is JSON
    assert [(r["logger"], r["level"]) for r in recs] == [  # in the order written
        ("tensorflow", "info"),  # absl's pre-init notice says WARNING but warns of nothing: logged as info
        ("tensorflow", "info"), ("tensorflow", "info"), ("tensorflow", "error"),
        ("traind.worker", "info"),  # traind's own record, written meanwhile: passed through unchanged
        ("traind.worker", "info")], recs
    assert recs[4]["msg"] == "traind's own line meanwhile" and recs[-1]["msg"] == "after"
    assert recs[1]["msg"].endswith("oneDNN custom operations are on.") and recs[1]["native"] is True


def test_tf_min_log_level_hides_the_banners_tensorflow_prints_anyway() -> None:
    """TensorFlow 2.21 prints these whatever TF_CPP_MIN_LOG_LEVEL says; traind applies the level itself."""
    lines = _run({"TRAIND_LOG_FORMAT": "text", "TF_CPP_MIN_LOG_LEVEL": "2"})
    text = "\n".join(lines)
    assert "absl::InitializeLog" not in text and "oneDNN" not in text and "continuation" not in text, text
    assert "an error" in text and "traind's own line meanwhile" in text and "after" in text, text
