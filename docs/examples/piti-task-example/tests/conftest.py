from importlib import metadata

import pytest

# piti's pytest plugin: the fixtures piti_config, fake_entry_points, plugin_host_factory, piti_host ...
pytest_plugins = ["piti_core.testing"]

HOW = "run `pip install ./docs/examples/piti-task-example` from piti's checkout (or `pip install -e .` here)"


def pytest_configure(config):
    try:
        metadata.distribution("piti-task-example")
    except metadata.PackageNotFoundError:
        raise pytest.UsageError(f"piti-task-example is not installed; {HOW}") from None
