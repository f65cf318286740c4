"""InferenceOptions and BackendConfig validation: no model needed."""

import pytest

from ferrousforge.api.request import InferenceOptions
from ferrousforge.inference.backend import BackendConfig


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", -1),
        ("temperature", -0.1),
        ("top_p", 1.5),
        ("top_k", -2),
        ("min_p", 2.0),
        ("typical_p", 0.0),
        ("repeat_penalty", 0.0),
        ("presence_penalty", 3.0),
        ("seed", -5),
        ("mirostat", 3),
        ("xtc_probability", 1.5),
        ("logprobs", 50),
        ("min_tokens", -1),
        ("stop", [""]),
        ("grammar", "  "),
    ],
)
def test_invalid_option_names_its_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        InferenceOptions(**{field: value})


def test_min_tokens_above_max_tokens_is_rejected():
    with pytest.raises(ValueError, match="min_tokens"):
        InferenceOptions(max_tokens=3, min_tokens=5)


def test_single_stop_string_is_accepted():
    assert InferenceOptions(stop="END").stop == ["END"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_threads", 0),
        ("batch_size", 0),
        ("max_parallel", 0),
        ("context_size", -1),
        ("split_mode", "diagonal"),
        ("flash_attention", "maybe"),
    ],
)
def test_invalid_config_names_its_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        BackendConfig(**{field: value})
