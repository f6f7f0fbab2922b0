"""Fixtures of the FID/KID tests: a tmp PITI_HOME, and one torch thread for the whole module.

Inception at 299×299 and 2048-d eigendecompositions run several times faster on one thread than on
two oversubscribed ones on the shared CI machines, so the thread count is set per module (the
module-scoped fixtures that load and run the network need it too).
"""

import pytest

from tests.helpers import one_torch_thread


@pytest.fixture(scope="module", autouse=True)
def eval_one_thread():
    with one_torch_thread():
        yield

