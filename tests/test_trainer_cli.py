"""``colzero train-phase`` argument handling (config building only; training is tested elsewhere)."""

from __future__ import annotations

import pytest

from colzero.cli.main import build_parser
from colzero.cli.train import build_config


def test_flags_and_toml_build_a_phase_config(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text(
        'name = "sup"\nmodel = "m"\noutput_dir = "o"\nbatch_size = 8\n'
        '[[sources]]\nname = "a"\npath = "a.jsonl"\nnegatives = "neg"\n'
        '[loss]\nkind = "contrastive"\ntemperature = 0.2\nn_negatives = 2\n[optim]\nlearning_rate = 8e-6\n'
    )
    args = build_parser().parse_args(
        ["train-phase", "--config", str(toml), "--lr", "1e-5", "--max-steps", "3"]
    )
    cfg = build_config(args)
    assert cfg.optim.learning_rate == 1e-5 and cfg.max_steps == 3 and cfg.loss.temperature == 0.2
    assert cfg.sources[0].negatives == "neg" and args.resume
    args = build_parser().parse_args(
        [
            "train-phase",
            "--model",
            "m",
            "--data",
            "x.jsonl",
            "--output",
            "o",
            "--batch-size",
            "4",
            "--lr",
            "1e-4",
            "--no-resume",
        ]
    )
    cfg = build_config(args)
    assert cfg.sources[0].path == "x.jsonl" and cfg.batch_size == 4 and not args.resume


def test_missing_flags_are_a_clear_error():
    args = build_parser().parse_args(["train-phase", "--model", "m", "--lr", "1e-4"])
    with pytest.raises(ValueError, match="missing"):
        build_config(args)
