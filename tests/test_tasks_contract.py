"""Every registered task honours the Task contract (tiny shapes, CPU)."""

import pytest

from piti_core.plugins import PluginHost
from piti_core.testing import assert_task_contract


def _tasks():
    host = PluginHost()
    host.load_entry_points()
    return host


HOST = _tasks()


@pytest.mark.parametrize("name", sorted(HOST.tasks))
def test_builtin_task_contract(name):
    from piti_core.config import resolve_config

    cfg = resolve_config(preset="tiny", extra_sections=HOST.task_sections())
    assert_task_contract(HOST.tasks[name], cfg)


def test_contract_catches_a_wrong_value_range():
    import torch

    from piti_core.tasks import ConditionSpec, Task

    class Bad(Task):
        name = "bad"
        description = "claims [-1, 1] but returns [0, 5]"
        sources = ("edges",)

        def condition_spec(self, cfg):
            return ConditionSpec(channels=1)

        def encode(self, sample, cfg):
            return sample["edges"] * 5

    with pytest.raises(AssertionError, match="outside"):
        assert_task_contract(Bad())
    assert torch  # torch is importable in the test environment


def test_contract_catches_wrong_channels():
    from piti_core.tasks import ConditionSpec, Task

    class Wrong(Task):
        name = "wrong"
        description = "says 3 channels, returns 1"
        sources = ("edges",)

        def condition_spec(self, cfg):
            return ConditionSpec(channels=3)

        def encode(self, sample, cfg):
            return sample["edges"]

    with pytest.raises(AssertionError, match="condition shape"):
        assert_task_contract(Wrong())
