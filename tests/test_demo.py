"""The demo is a positive control: it plants one effect per question in its synthetic data
(search_spaces/studies/demo.yaml says how), and its report must recover each direction."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.test_e2e import ablate

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def rows(table: pd.DataFrame, axis: str, **fixed: str) -> pd.Series:
    """The mean paired test-score differences of one question's comparisons, by comparison."""
    chosen = table[table["axis"] == axis]
    for column, value in fixed.items():
        chosen = chosen[chosen[column] == value]
    assert len(chosen), f"no {axis} comparison with {fixed}"
    return chosen.set_index("comparison")["mean_difference"]


def test_the_demo_report_recovers_every_planted_effect(tmp_path):
    spec = yaml.safe_load((ROOT / "search_spaces/studies/demo.yaml").read_text())
    spec["search_space_dir"] = str(ROOT / spec["search_space_dir"])
    spec["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlruns.db'}"
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(spec))
    run = ablate("run", str(path), cwd=tmp_path, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = ablate("report", str(path), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    print(f"demo report: {tmp_path / 'report' / 'report.md'}")

    table = pd.read_csv(tmp_path / "report" / "comparisons.csv")
    text = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "## Answers" in text and "This sweep is unfinished" not in text
    # Every cell has its replicates on test: the answers are test-score differences.
    assert (table["n_replicates"] == 3).all(), table[["comparison", "n_replicates"]]

    # Architecture (treatment transformer, baseline ConvNova): the convolution wins on chars.
    architecture = rows(table, "architecture", tokenizer="char")
    assert (architecture < 0).all(), architecture
    # Tokenizer (treatment BPE, baseline char): BPE helps the transformer.
    tokenizer = rows(table, "tokenizer", architecture="transformer")
    assert (tokenizer > 0).all(), tokenizer
    # Pretraining (treatment mlm:tiny, baseline none): it helps where there is most to learn
    # (the char cells), and hurts nowhere beyond the resolution of a 61-row test split.
    pretraining = rows(table, "pretraining")
    char = rows(table, "pretraining", tokenizer="char")
    assert char.mean() > 0, char
    assert (pretraining > -0.05).all(), pretraining
