import sys
from pathlib import Path

import pytest

# The scripted runner lives beside the tests, not in the package.
sys.path.insert(0, str(Path(__file__).parent))

from live_server import pytest_runtest_makereport  # noqa: F401  (server log in failed tests)


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The real default model (TEST_MODEL_PATH overrides it)."""
    from ferrousforge.models.default_model import default_model_path

    path = default_model_path()
    if not path.exists():
        pytest.fail(f"default model missing at {path}: run `make install`")
    return path
