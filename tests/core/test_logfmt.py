"""``TRAIND_LOG_FORMAT=json``: every line on stderr is one JSON object, including what native code (TensorFlow's
C++ start-up lines) writes straight to file descriptor 2 while TensorFlow is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_native_stderr_lines_become_json_records(fmt: str) -> None:
    env = {**os.environ, "TRAIND_LOG_FORMAT": fmt}
    p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    if fmt == "text":  # nothing captured: the lines pass through as they are
        assert lines[0].startswith("WARNING: All log messages") and "I0000" in lines[1], lines
        return
    recs = [json.loads(x) for x in lines]  # every line is JSON
    assert [(r["logger"], r["level"]) for r in recs] == [  # in the order written
        ("tensorflow", "warning"), ("tensorflow", "info"), ("tensorflow", "info"), ("tensorflow", "error"),
        ("traind.worker", "info"),  # traind's own record, written meanwhile: passed through unchanged
        ("traind.worker", "info")], recs
    assert recs[4]["msg"] == "traind's own line meanwhile" and recs[-1]["msg"] == "after"
    assert recs[1]["msg"].endswith("oneDNN custom operations are on.") and recs[1]["native"] is True
