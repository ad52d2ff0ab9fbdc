"""The MLflow schema: one source of names, every numeric result logged, a versioned store, and
a typed trial description that survives pickling."""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ablate.errors import AblateError
from ablate.shards import TaskInputs
from ablate.spec import Cell
from ablate.tracking.schema import (
    SCHEMA_VERSION,
    MetricName,
    Outcome,
    Stage,
    Tag,
    cell_tags,
    tag_column,
    tag_filter,
)
from ablate.trial import CellPlan, ModelPlan, ModelSource, Resources, TrialConfig

ROOT = Path(__file__).resolve().parents[1]
CELL = Cell("cnn", "none", "char", "tf/0")


def plan_for(cell: Cell = CELL, source: ModelSource | None = None) -> CellPlan:
    inputs = TaskInputs(task=cell.task, tokenizer=cell.tokenizer, tokenizer_path="/nowhere",
                        vocab_size=10, num_classes=2, length_bp=100, token_limit=102,
                        splits={"train": "/shards/train", "dev": "/shards/dev"},
                        complement_ids=tuple(range(10)))
    return CellPlan(cell=cell, inputs=inputs, model=ModelPlan("cnn", "tiny", {}, 102),
                    source=source or ModelSource(), resources=Resources(1.0, 0.0),
                    prices={"cpu": 0.05}, max_epochs=2)


def test_trial_description_round_trips_through_tune_config_and_pickles():
    import ray.cloudpickle

    config = TrialConfig(CELL.name, {"learning_rate": 0.01, "batch_size": 32}, seed=7,
                         optuna_trial=3)
    tune_config = config.to_tune()
    assert TrialConfig.from_tune(tune_config) == config
    replicate = config.as_replicate(1, study_seed=0, source_trial="abc")
    assert replicate.evaluate_test and not config.evaluate_test
    assert TrialConfig.from_tune(replicate.to_tune()) == replicate
    # Tune's config holds only searched values and ids: no data, model or paths.
    assert set(tune_config) == {"cell", "hparams", "seed", "stage", "optuna_trial"}
    plan = plan_for(source=ModelSource("mlm", run_id="r1", weights_key="k1"))
    for dumps, loads in ((pickle.dumps, pickle.loads),
                         (ray.cloudpickle.dumps, ray.cloudpickle.loads)):
        assert loads(dumps(plan)) == plan
        assert loads(dumps(tune_config)) == tune_config


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """String constants of a Python file, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


def test_tag_names_are_spelled_only_in_the_schema_module():
    names = [value for key, value in vars(Tag).items() if key.isupper()]
    names = [n for n in names if n.startswith("ablate.")]
    column = tag_column("ablate.")  # "tags.ablate.", a prefix of every tag column
    spelled = []
    for folder in ("ablate", "bench", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "ablate" / "tracking" / "schema.py":
                continue
            for line, text in _string_constants(path):
                for candidate in (text, text.removeprefix("tags."), text.removeprefix("tags.`")):
                    if candidate.startswith(column) or any(
                            candidate == n or candidate.startswith(n + "`") for n in names):
                        spelled.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
                        break
    assert spelled == []


def _logger(tmp_path: Path, plan: CellPlan):
    from mlflow import MlflowClient

    from ablate.tracking.writer import MLflowTrialLogger, open_cell_runs

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("schema")
    cell_runs = open_cell_runs(client, experiment, "schema", "schema-1", [plan.cell])
    logger = MLflowTrialLogger(uri, experiment, "schema", "schema-1", {plan.cell.name: plan},
                               cell_runs)
    return client, experiment, logger


def test_logger_logs_every_numeric_field_but_tunes_own(tmp_path):
    plan = plan_for()
    client, experiment, logger = _logger(tmp_path, plan)
    trial = SimpleNamespace(trial_id="t1", config=TrialConfig(CELL.name, {"dropout": 0.1},
                                                               seed=1).to_tune(),
                            last_result={"training_iteration": 2, "finished": 1})
    logger.on_trial_start(0, [], trial)
    result = {"training_iteration": 1, "dev_mcc": 0.3, "a_metric_no_list_names": 4.5,
              "numpy_count": np.int64(7), "numpy_share": np.float32(0.25),
              "finished": 0, "device_name": "cpu", "time_this_iter_s": 1.2, "time_total_s": 3.0,
              "timestamp": 1_700_000_000, "pid": 123, "done": False, "trial_id": "t1",
              "config": {"cell": CELL.name}, "iterations_since_restore": 1}
    logger.on_trial_result(0, [], trial, result)
    logger.on_trial_complete(0, [], trial)
    (run,) = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.TRIAL))
    assert set(run.data.metrics) == {"dev_mcc", "a_metric_no_list_names", "finished",
                                     "numpy_count", "numpy_share"}
    assert run.data.metrics["numpy_count"] == 7.0
    assert run.data.tags[Tag.DEVICE_NAME] == "cpu"
    assert run.data.tags[Tag.OUTCOME] == Outcome.COMPLETED
    assert run.data.tags[Tag.SCHEMA_VERSION] == str(SCHEMA_VERSION)
    assert run.data.params["max_epochs"] == "2" and run.data.params["dropout"] == "0.1"
    assert Tag.PRETRAIN_RUN_ID not in run.data.tags  # from scratch: no link
    (cell_run,) = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.CELL))
    assert cell_run.data.tags[Tag.SCHEMA_VERSION] == str(SCHEMA_VERSION)


def _old_store(tmp_path: Path, version: str | None) -> str:
    """A store as an earlier (no version tag) or a later ablate wrote it: one cell, one trial."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    uri = f"sqlite:///{tmp_path / 'old.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("old")
    base = {Tag.STUDY: "old", Tag.SWEEP: "old-1", **cell_tags(CELL)}
    if version is not None:
        base[Tag.SCHEMA_VERSION] = version
    parent = client.create_run(experiment, tags={**base, Tag.STAGE: Stage.CELL}).info.run_id
    trial = client.create_run(experiment, tags={
        **base, Tag.STAGE: Stage.TRIAL, Tag.TRIAL_ID: "t1", Tag.OUTCOME: Outcome.COMPLETED,
        Tag.PARENT_RUN: parent}).info.run_id
    client.log_param(trial, "max_epochs", "2")
    client.log_batch(trial, metrics=[Metric(MetricName.BEST_DEV_MCC, 0.4, 0, 2)])
    for run_id in (trial, parent):
        client.set_terminated(run_id)
    return uri


def test_report_reads_a_sweep_written_before_the_schema_version(tmp_path):
    from ablate.report import write_report

    uri = _old_store(tmp_path, version=None)
    report = write_report(uri, "old", tmp_path / "report")
    assert report.sweep == "old-1"
    assert list(report.cells["cell"]) == [CELL.name]
    assert float(report.cells["best_dev_mcc"].iloc[0]) == pytest.approx(0.4)


def test_a_store_from_a_newer_schema_is_refused(tmp_path):
    from ablate import analysis

    uri = _old_store(tmp_path, version=str(SCHEMA_VERSION + 1))
    with pytest.raises(AblateError, match="newer than this ablate"):
        analysis.runs(uri, "old")


def test_resume_refuses_a_sweep_of_an_older_schema(tmp_path):
    """`ablate run --resume` on a sweep an earlier ablate wrote says so, before Ray starts."""
    uri = _old_store(tmp_path, version=None)
    spec = tmp_path / "old.yaml"
    spec.write_text(
        "name: old\n"
        "data: {synthetic: {scale: 0.01, seed: 0}, tasks: [tf/0]}\n"
        "axes: {architecture: [cnn], pretraining: [none], tokenizer: [char]}\n"
        "budget: {trials_per_cell: 1, max_epochs: 2}\n"
        f"tracking: {{uri: '{uri}'}}\n"
    )
    run = subprocess.run([sys.executable, "-m", "ablate.cli", "run", str(spec), "--resume"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert "old-1" in run.stderr and "cannot be resumed" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_trial_builds_from_its_plan_without_the_drivers_files(tmp_path):
    """Tokenizer, shard folders and pretrained weights are named in the plan but never opened
    by the trial: splits and model files arrive as values (the object store), as on a worker
    node that cannot see the driver's disk."""
    import shutil

    import torch

    from ablate.models.io import save_model
    from ablate.models.registry import build_mlm
    from ablate.shards import SplitArrays
    from ablate.training import build_model, load_splits

    cell = Cell("convnova", "mlm:tiny", "char", "tf/0")
    folder = tmp_path / "pretrained"
    encoder_source = build_mlm("convnova", preset="tiny", vocab_size=10, max_len=102,
                               complement_ids=list(range(10)))
    save_model(encoder_source, folder)
    model_files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    shutil.rmtree(folder)  # only the bytes remain, as in the object store
    plan = plan_for(cell, ModelSource("mlm", run_id="r1", weights_key="k1"))
    plan = CellPlan(**{**plan.__dict__, "model": ModelPlan("convnova", "tiny", {}, 102)})
    assert not Path(plan.inputs.tokenizer_path).exists()
    assert not any(Path(f).exists() for f in plan.inputs.splits.values())
    rows = np.full((6, 12), 3, dtype=np.int32)
    rows[:, :8] = 5 + np.arange(8) % 4
    arrays = SplitArrays(rows, np.full(6, 8, dtype=np.int32), np.array([0, 1] * 3))
    config = TrialConfig(cell.name, {"dropout": 0.0}, seed=0)
    splits = load_splits(plan, config, {f: arrays for f in plan.inputs.splits.values()},
                         torch.device("cpu"))
    model = build_model(plan, config, {"k1": model_files}).eval()
    for name, tensor in encoder_source.encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[name], tensor)
    with torch.no_grad():
        logits = model(splits["train"].input_ids, splits["train"].attention_mask)
    assert logits.shape == (6, 2)
