import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def _model_available() -> bool:
    try:
        from ferrousforge.models.default_model import default_model_path

        return default_model_path().exists()
    except Exception:
        return False


@pytest.fixture(scope="session")
def model_path() -> Path:
    from ferrousforge.models.default_model import default_model_path

    path = default_model_path()
    if not path.exists():
        pytest.fail(f"default model missing at {path}: run `make install`")
    return path


os.environ.setdefault("PYTHONHASHSEED", "0")
