"""Published reference scores on GUE, shown in the report beside a study's own.

The figures are those the DNABERT-2 paper reports in its Table 4 (test MCC x 100; F1 for
virus/covid, which is not among them), for the GUE datasets whose train, dev and test splits
are complete in the release ablate reads. They are published numbers, copied as printed; the
report divides them by 100 to put them on the study's own scale.

The published models differ from what a study usually trains: DNABERT-2 has 117M parameters,
a BPE tokenizer with a 4,096-token vocabulary and was pretrained on 32.5B bases of many
species' genomes; DNABERT uses overlapping 3-mers. A study's cells are usually far smaller,
fine-tuned for few epochs after a short search, and its pretraining (if any) is its own.
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION = ("Zhou, Z., Ji, Y., Li, W., Dutta, P., Davuluri, R. and Liu, H. (2024). "
            "DNABERT-2: Efficient Foundation Model and Benchmark for Multi-Species Genome. "
            "ICLR 2024. arXiv:2306.15006. Table 4.")
SOURCE = "DNABERT-2 paper (Zhou et al., ICLR 2024), Table 4"
SCALE = 100.0  # the paper prints MCC x 100


@dataclass(frozen=True)
class ReferenceModel:
    """A published model: its name, its setup in words and its scores (as printed)."""

    name: str
    setup: str
    scores: dict[str, float]


DNABERT2 = ReferenceModel(
    name="DNABERT-2",
    setup="117M parameters, BPE (4,096 tokens), pretrained on 32.5B bases of multiple species",
    scores={
        "prom/prom_core_all": 69.37,
        "prom/prom_core_notata": 68.04,
        "prom/prom_core_tata": 74.17,
        "prom/prom_300_tata": 71.59,
        "tf/0": 71.99,
        "tf/1": 76.06,
        "tf/2": 66.52,
        "tf/3": 58.54,
        "tf/4": 77.43,
        "mouse/0": 56.76,
        "mouse/2": 79.32,
        "mouse/3": 66.47,
        "mouse/4": 52.66,
    },
)
DNABERT = ReferenceModel(
    name="DNABERT (3-mer)",
    setup="BERT-base encoder on overlapping 3-mers, pretrained on the human genome",
    scores={"prom/prom_core_tata": 78.15, "tf/0": 67.95, "mouse/0": 42.31},
)
MODELS = (DNABERT2, DNABERT)


def reference_scores(tasks) -> list[dict[str, object]]:
    """Per task of ``tasks`` that has a published figure: the task, each model's score on
    the study's scale (MCC, 0-1) and the source. Tasks without one are left out."""
    rows = []
    for task in sorted(set(tasks)):
        scores = {m.name: m.scores[task] / SCALE for m in MODELS if task in m.scores}
        if scores:
            rows.append({"task": task, **scores, "source": SOURCE})
    return rows
