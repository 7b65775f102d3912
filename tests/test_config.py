"""Device and cluster settings (toolkit.config)."""

import subprocess
import sys

import pytest

import toolkit as tc
from toolkit.errors import InvalidParameterError


@pytest.fixture(autouse=True)
def _reset(monkeypatch):
    monkeypatch.delenv("TOOLKIT_DEVICES", raising=False)
    monkeypatch.delenv("DMLC_ROLE", raising=False)
    yield
    tc.config.set_devices(None)


def test_default_is_the_cpu_without_gpus():
    assert tc.config.get_devices() == ["cpu(0)"]      # the installed mxnet is a CPU build


@pytest.mark.parametrize("given, expected", [
    (["cpu(0)", "cpu(1)"], ["cpu(0)", "cpu(1)"]),
    ("cpu", ["cpu(0)"]),
    ([" gpu ( 1 ) "], ["gpu(1)"]),
])
def test_set_devices_accepts_names(given, expected):
    tc.config.set_devices(given)
    assert tc.config.get_devices() == expected


def test_set_devices_accepts_mxnet_contexts():
    from toolkit._mx import mx
    tc.config.set_devices([mx().cpu(0), mx().cpu(2)])
    assert tc.config.get_devices() == ["cpu(0)", "cpu(2)"]


@pytest.mark.parametrize("bad", [[], ["tpu(0)"], ["cpu(0)", "cpu(0)"], [3], ["cpu(-1)"]])
def test_bad_devices_are_refused(bad):
    with pytest.raises(InvalidParameterError, match="set_devices"):
        tc.config.set_devices(bad)


def test_environment_variable_chooses_devices(monkeypatch):
    monkeypatch.setenv("TOOLKIT_DEVICES", "cpu(0),cpu(1)")
    assert tc.config.get_devices() == ["cpu(0)", "cpu(1)"]
    tc.config.set_devices(["cpu(3)"])           # the call wins over the environment
    assert tc.config.get_devices() == ["cpu(3)"]


def test_bad_environment_variable_names_itself(monkeypatch):
    monkeypatch.setenv("TOOLKIT_DEVICES", "npu7")
    with pytest.raises(InvalidParameterError, match="TOOLKIT_DEVICES"):
        tc.config.get_devices()


def test_set_num_gpus():
    tc.config.set_num_gpus(0)
    assert tc.config.get_devices() == ["cpu(0)"]
    tc.config.set_num_gpus(2)
    assert tc.config.get_devices() == ["gpu(0)", "gpu(1)"]
    # This machine's mxnet sees no GPU: training says so instead of failing deep inside.
    with pytest.raises(InvalidParameterError, match="gpu\\(0\\).*sees 0 GPU"):
        tc.config.contexts()
    tc.config.set_num_gpus(-1)
    assert tc.config.get_devices() == ["cpu(0)"]
    for bad in (-2, 1.5, True, "1"):
        with pytest.raises(InvalidParameterError, match="set_num_gpus"):
            tc.config.set_num_gpus(bad)


def test_training_on_a_missing_gpu_is_a_clear_error(watch_small):
    tc.config.set_num_gpus(1)
    with pytest.raises(InvalidParameterError, match="set_devices"):
        tc.activity_classifier.create(watch_small, "session_id", "exercise", max_iterations=1,
                                      verbose=False)


def test_outside_a_cluster():
    assert tc.config.cluster() is None and tc.config.is_writer()


def test_config_does_not_import_mxnet():
    code = "import toolkit, sys; toolkit.config.get_devices.__doc__; print('mxnet' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_shared_seed_outside_a_cluster():
    assert tc.config.shared_seed(7) == 7
    drawn = {tc.config.shared_seed(None) for _ in range(5)}
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in drawn)
    assert len(drawn) > 1            # drawn from entropy, not a fixed default
