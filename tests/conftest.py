"""Fixtures shared by all test folders."""

import pytest


@pytest.fixture(scope="module")
def piti_home(tmp_path_factory):
    """A fresh PITI_HOME for the module, so caches never land in the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("piti_home")
    mp.setenv("PITI_HOME", str(home))
    yield home
    mp.undo()
