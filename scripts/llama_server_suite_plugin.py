"""pytest plugin for llama-server's own test suite: the bundled model replaces its test models.

llama-server's tests download a handful of tiny models from the Hugging Face Hub. This machine
runs offline, so every model source a test names (``--hf-repo``, ``--hf-file``, ``--model-url``,
``--model``, ``--model-draft``) is replaced by ``SUITE_MODEL`` before the server starts; a
server started without any model (router mode) is left as it is. Nothing else in the tests
changes, and the same substitution is made for llama-server and for FerrousForge.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    import utils  # the suite's own helpers, importable from its rootdir

    model = os.environ["SUITE_MODEL"]
    start = utils.ServerProcess.start

    def start_with_bundled_model(self, *args, **kwargs):
        if self.model_hf_repo or self.model_hf_file or self.model_url or self.model_file:
            self.model_file = model
        self.model_hf_repo = self.model_hf_file = self.model_url = None
        if self.model_draft:
            self.model_draft = model
        return start(self, *args, **kwargs)

    utils.ServerProcess.start = start_with_bundled_model
    # load_all() starts every preset once to fill the download cache: nothing to download.
    utils.ServerPreset.load_all = staticmethod(lambda: None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """SUITE_ONLY=FILE (one test id per line): run only those, e.g. the ones llama-server
    passes (scripts/llama_server_suite_report.py --passed-ids writes that list)."""
    only = os.environ.get("SUITE_ONLY")
    if not only:
        return
    wanted = {line.strip() for line in open(only, encoding="utf-8") if line.strip()}
    keep = [i for i in items if i.nodeid in wanted]
    config.hook.pytest_deselected(items=[i for i in items if i.nodeid not in wanted])
    items[:] = keep
