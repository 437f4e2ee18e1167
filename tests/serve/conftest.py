"""GKT serving tests: a real Serve app on 127.0.0.1, started once per module, shut down after."""
import pytest
from ray import serve


@pytest.fixture(scope="module")
def serve_shutdown(ray_local):
    yield
    serve.shutdown()  # later tests get their CPUs back
