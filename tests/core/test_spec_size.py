"""The spec's JSON size: one C-encoder call for a plain spec, the bounded chunked count for anything that could
expand (a container reached twice: a YAML alias bomb), the same number either way."""

from __future__ import annotations

import json

from jobs.contract.spec import _json_size, _plain_json_size


def test_plain_spec_size_is_its_json_length() -> None:
    spec = {"name": "x", "fit": {"epochs": 3, "lr": 0.1, "flags": [True, None, "a"]}, "n": 10**50}
    assert _plain_json_size(spec) == len(json.dumps(spec)) == _json_size(spec, None)


def test_shared_containers_take_the_bounded_count() -> None:
    leaf: list = ["x" * 10] * 10
    bomb: dict = {"a": leaf}
    for _ in range(30):  # 10 * 2**30 strings once expanded: only the chunked count stops early
        bomb = {"a": bomb, "b": bomb}
    assert _plain_json_size(bomb) is None
    assert 1000 < _json_size(bomb, 1000) < 2000
