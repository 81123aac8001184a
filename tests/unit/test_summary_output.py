"""The end-of-run summary, piped (not a terminal): paths are printed whole, never wrapped."""

from __future__ import annotations

import pytest

from vaelab.utils import print_summary

LONG = "logs/train/runs/2026-01-01_12-00-00_12345-abcdef/checkpoints/best-epoch009.ckpt" + "x" * 40


def test_a_piped_summary_prints_each_path_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    print_summary("test", {"test/nll": 98.7, "test/nll_se": 0.3}, {"best checkpoint": LONG})
    out = capsys.readouterr().out
    assert f"best checkpoint: {LONG}" in out.splitlines()
    assert "98.70 ± 0.30" in out
