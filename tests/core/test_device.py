"""Device pinning happens through the environment, before TensorFlow loads (pure logic, no TF import needed)."""

from __future__ import annotations

import pytest

from jobs.errors import ConfigError
from worker.device import pin_device


@pytest.mark.parametrize(("device", "visible"), [("cpu", "-1"), ("gpu:1", "1"), ("gpu:0", "0"), ("gpu:0,1", "0,1")])
def test_pin_device_sets_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, device: str, visible: str) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    pin_device(device)
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == visible


def test_pin_device_refuses_garbage() -> None:
    with pytest.raises(ConfigError, match="expected cpu, gpu, gpu:N or gpu:N,M,..., received 'tpu'"):
        pin_device("tpu")
