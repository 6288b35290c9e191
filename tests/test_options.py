"""EmbedderOptions: one declaration of how a model loads, flags > environment > defaults."""

import argparse

import pytest

from pplx_embed.errors import InputError
from pplx_embed.options import DEFAULT_MAX_BATCH_TOKENS, EmbedderOptions


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    EmbedderOptions.add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_beat_environment_which_beats_defaults():
    env = {"PPLX_EMBED_BACKEND": "onnx", "PPLX_EMBED_MAX_BATCH_TOKENS": "4096", "PPLX_EMBED_MODEL": "minilm"}
    assert EmbedderOptions.from_args(_parse([]), env) == EmbedderOptions(
        model="minilm", backend="onnx", max_batch_tokens=4096)
    opts = EmbedderOptions.from_args(_parse(["--backend", "torch", "--max-batch-tokens", "512", "-m", "x"]), env)
    assert (opts.backend, opts.max_batch_tokens, opts.model) == ("torch", 512, "x")
    assert EmbedderOptions.from_env({}).max_batch_tokens == DEFAULT_MAX_BATCH_TOKENS


@pytest.mark.parametrize("kwargs, match", [
    ({"backend": "tensorrt"}, "choose one of"),
    ({"dtype": "int4"}, "choose one of"),
    ({"max_batch_tokens": 0}, "positive integer"),
    ({"truncation": "middle"}, "right, left"),
])
def test_bad_values_are_input_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        EmbedderOptions(**kwargs)


def test_bad_environment_names_the_variable():
    with pytest.raises(InputError, match="PPLX_EMBED_MAX_BATCH_TOKENS"):
        EmbedderOptions.from_env({"PPLX_EMBED_MAX_BATCH_TOKENS": "lots"})


def test_bad_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        _parse(["--max-batch-tokens", "-3"])
    assert "positive integer" in capsys.readouterr().err
