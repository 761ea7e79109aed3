"""One CLI grammar: flags generated from a typed settings class, --config FILE, key=value overrides."""

import pytest

from transferlab.cli import build_parser, config_from_args, main
from transferlab.commands.generate import GenerateSettings
from transferlab.commands.icl import IclSettings
from transferlab.config import DType
from transferlab.errors import ConfigError


def _parse(*argv):
    return build_parser().parse_args(list(argv))


def test_precedence_defaults_file_flags_overrides(tmp_path):
    f = tmp_path / "gen.yaml"
    f.write_text("model: runs/m\ntop_p: 0.5\nnum_beams: 2\nprompt: [a, b]\ndtype: bf16\n")
    s = config_from_args(_parse("generate", "--config", str(f), "--num-beams", "3", "top_k=7", "generate.seed=4"),
                         GenerateSettings, "generate")
    assert (s.model, s.top_p, s.num_beams, s.top_k, s.seed, s.prompt) == ("runs/m", 0.5, 3, 7, 4, ["a", "b"])
    assert s.dtype == DType.BF16 and s.max_new_tokens == 50  # the file's value; an untouched default


def test_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="unknown field 'top_q'"):
        config_from_args(_parse("generate", "--model", "m", "top_q=1"), GenerateSettings, "generate")
    with pytest.raises(ConfigError, match="max_new_tokens='x': expected int"):
        config_from_args(_parse("generate", "--model", "m", "max_new_tokens=x"), GenerateSettings, "generate")
    with pytest.raises(ConfigError, match="give --model DIR"):
        config_from_args(_parse("icl"), IclSettings, "icl")
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_tests: 3\n")
    with pytest.raises(ConfigError, match="unknown field"):
        config_from_args(_parse("icl", "--model", "m", "--config", str(bad)), IclSettings, "icl")


def test_help_shows_field_docs_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    assert "--max-new-tokens N" in out and "tokens to generate (default: 50)" in out
    assert "{auto,bf16,fp16,fp32}" in out and "key=value" in out
