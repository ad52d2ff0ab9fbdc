"""Like-for-like arms, fresh replicate seeds, published recipes inside the search."""

from __future__ import annotations

import pytest

from ablate.errors import AblateError
from ablate.recipes import PUBLISHED_RECIPES, recipe_values
from ablate.spec import DEFAULT_SEARCH_SPACE_DIR, expand_cells, load_search_space, parse_study
from ablate.study import check_like_for_like
from ablate.trial import ModelPlan, TrialConfig, replicate_seed, search_seed
from ablate.tune_plugins import CellSearcher


def study(tmp_path, **changes):
    tokenizer = tmp_path / "tok" / "tokenizer.json"
    tokenizer.parent.mkdir(exist_ok=True)
    tokenizer.write_text("{}")
    data = {
        "name": "fair",
        "data": {"synthetic": {"scale": 0.05}, "tasks": ["prom/prom_core_tata", "mouse/2"]},
        "axes": {"architecture": ["convnova", "transformer", "kmer", "dnabert2"],
                 "pretraining": ["none", "mlm:small", "external:dnabert2"],
                 "tokenizer": ["char", f"bpe:{tokenizer.parent}"]},
        "budget": {"trials_per_cell": 2, "max_epochs": 2},
        "pretrain_specs": {"small": {}},
        "external_checkpoints": {"dnabert2": {"path": str(tmp_path), "device_hours": 1.0,
                                              "tokenizer": f"bpe:{tokenizer.parent}"}},
    }
    data.update(changes)
    return parse_study(data, base_dir=tmp_path)


def test_every_pretrained_cell_meets_its_own_scratch_twin(tmp_path):
    cells = expand_cells(study(tmp_path))
    names = {c.name for c in cells}
    bpe = next(c.tokenizer for c in cells if c.tokenizer != "char")
    for cell in cells:
        if cell.pretraining != "none":
            twin = f"{cell.architecture}|none|{cell.tokenizer}|{cell.task}"
            assert twin in names, cell.name
    task = "prom/prom_core_tata"
    # The checkpoint's own arms: pretrained and its config at random init, its tokenizer only.
    assert {c.name for c in cells if c.architecture == "dnabert2" and c.task == task} == {
        f"dnabert2|external:dnabert2|{bpe}|{task}", f"dnabert2|none|{bpe}|{task}"}
    # No other architecture is ever paired with the checkpoint.
    assert not [c for c in cells if c.pretraining.startswith("external:")
                and c.architecture != "dnabert2"]
    # The k-mer floor: single nucleotides, from scratch.
    assert {(c.pretraining, c.tokenizer) for c in cells if c.architecture == "kmer"} == {
        ("none", "char")}
    families = {c.architecture: c.family for c in cells}
    assert families == {"convnova": "convolutional", "transformer": "transformer",
                        "kmer": "baseline", "dnabert2": "transformer"}


def test_external_checkpoint_against_ablate_transformer_is_refused(tmp_path):
    with pytest.raises(AblateError, match="add 'dnabert2' to axes.architecture"):
        study(tmp_path, axes={"architecture": ["transformer"],
                              "pretraining": ["none", "external:dnabert2"],
                              "tokenizer": [f"bpe:{tmp_path / 'tok'}"]})


def test_kmer_needs_char_and_checkpoints_take_no_preset(tmp_path):
    with pytest.raises(AblateError, match="kmer counts k-mers"):
        study(tmp_path, axes={"architecture": ["kmer"], "tokenizer": ["bpe"]})
    with pytest.raises(AblateError, match="takes no preset"):
        study(tmp_path, models={"dnabert2": {"preset": "tiny"}})


def test_unlike_arms_are_refused_naming_the_cells(tmp_path):
    cells = [c for c in expand_cells(study(tmp_path)) if c.architecture == "transformer"]
    models = {c.name: ModelPlan("transformer", "tiny", {}, 72) for c in cells}
    check_like_for_like(cells, models)  # same model in both arms: fine
    pretrained = next(c for c in cells if c.pretraining == "mlm:small")
    models[pretrained.name] = ModelPlan("transformer", "small", {}, 72)
    with pytest.raises(AblateError, match="different models") as error:
        check_like_for_like(cells, models)
    assert pretrained.name in str(error.value)


def test_per_task_epochs(tmp_path):
    spec = study(tmp_path, budget={"trials_per_cell": 1, "max_epochs": 2,
                                   "max_epochs_by_task": {"mouse/2": 5}})
    assert spec.budget.epochs_for("mouse/2") == 5 and spec.budget.epochs_for(
        "prom/prom_core_tata") == 2
    with pytest.raises(AblateError, match="not one of data.tasks"):
        study(tmp_path, budget={"trials_per_cell": 1, "max_epochs": 2,
                                "max_epochs_by_task": {"tf/0": 5}})


def test_replicate_seeds_never_repeat_a_search_seed():
    for study_seed in (0, 1, 7):
        searched = {search_seed(study_seed, slot) for slot in range(500)}
        replicated = {replicate_seed(study_seed, label) for label in range(-5, 500)}
        assert not searched & replicated
    # The first search trials and the README's replicates [0, 1, 2] used to be the same runs.
    config = TrialConfig("c", {"learning_rate": 1e-3}, seed=search_seed(0, 1), slot=1)
    replicate = config.as_replicate(1, study_seed=0, source_trial="t1")
    assert replicate.seed != config.seed and replicate.replicate == 1


def test_searcher_seeds_come_from_slots_shared_by_all_cells(tmp_path):
    cells = [c for c in expand_cells(study(tmp_path)) if c.architecture == "convnova"][:2]
    spaces = {"convnova": load_search_space(DEFAULT_SEARCH_SPACE_DIR, "convnova")}
    searcher = CellSearcher(cells, spaces, trials_per_cell=2, max_epochs=2, max_concurrent=4,
                            seed=3)
    configs = [TrialConfig.from_tune(searcher.suggest(f"t{i}")) for i in range(4)]
    by_cell = {}
    for config in configs:
        by_cell.setdefault(config.cell, []).append((config.slot, config.seed))
    assert all(v == [(0, search_seed(3, 0)), (1, search_seed(3, 1))] for v in by_cell.values())


def test_published_recipes_lie_inside_every_search_space():
    for arch in ("transformer", "convnova", "unet", "cnn"):
        space = load_search_space(DEFAULT_SEARCH_SPACE_DIR, arch)
        for recipe, values in PUBLISHED_RECIPES.items():
            for name, value in values.items():
                spec = space.params.get(name)
                if spec is None:
                    continue
                for v in recipe_values(value):
                    if spec.type == "categorical":
                        assert v in spec.choices, (arch, recipe, name, v)
                    else:
                        assert spec.low <= v <= spec.high, (arch, recipe, name, v)
                        # inside, not on an edge (a low of 0 is a natural bound)
                        assert v == 0 or spec.low < v < spec.high, (arch, recipe, name, v)
        warmups = {"warmup_steps", "warmup_ratio"} & set(space.params)
        assert warmups and "schedule" in space.params, arch


@pytest.mark.integration
def test_covid_is_scored_with_macro_f1(tmp_path):
    """virus/covid (synthetic: the real files are often absent) is selected, stopped and
    reported on macro F1, its registry metric; the k-mer floor searches its own k."""
    from ablate.analysis import latest_sweep, trials
    from ablate.tracking.schema import MetricName, metric_column, param_column
    from tests.test_e2e import ablate, write_spec

    spec = write_spec(
        tmp_path, name="covid",
        data={"synthetic": {"scale": 0.01, "seed": 2}, "tasks": ["virus/covid"]},
        axes={"architecture": ["kmer"], "pretraining": ["none"], "tokenizer": ["char"]},
        budget={"trials_per_cell": 2, "max_epochs": 2, "concurrent_trials": 2},
        replicates=[0],
    )
    run = ablate("run", str(spec), cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    frame = trials(uri, "covid", latest_sweep(uri, "covid")[1])
    score, f1 = metric_column(MetricName.DEV_SCORE), metric_column("dev_f1")
    assert len(frame) == 2 and (frame[score] == frame[f1]).all()
    assert (frame[metric_column(MetricName.BEST_DEV_SCORE)] >= frame[score]).all()
    assert set(frame[param_column("k")].astype(int)) <= {3, 4, 5, 6}
    report = ablate("report", str(spec), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert "f1_macro" in (tmp_path / "report" / "report.md").read_text()
