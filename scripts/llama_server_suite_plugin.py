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
