"""A sweep's provenance: spec, search spaces, versions, data hashes, hardware, suggestions.

Unit tests for the hasher, the git state and the seed-to-slot inverse; then a real tiny study
(real Ray, real MLflow, through the ``ablate`` command) whose ``Stage.SWEEP`` run is read back
and checked against the files, the cell runs and the trial runs themselves.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

from ablate.hashing import FileHasher, data_digest
from ablate.provenance import (
    START_PARTS,
    SUGGESTIONS,
    data_hashes,
    inverse_search_seed,
    report_lines,
    study_files,
)
from ablate.tracking.schema import SCHEMA_VERSION, Stage, Tag, tag_column, tag_filter
from ablate.trial import search_seed
from tests.tiny_study import TRIALS_PER_CELL, run_ablate, tiny_study


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- units ------------------------------------------------------------------------------------


def test_hasher_matches_hashlib_and_reads_only_changed_files(tmp_path):
    files = [tmp_path / f"f{i}.csv" for i in range(3)]
    for i, path in enumerate(files):
        path.write_text(f"sequence,label\n{'ACGT' * (i + 1)},{i % 2}\n")
    cache = tmp_path / "cache" / "sha256.json"
    first = FileHasher(cache)
    digests = first.hash_all(files)
    assert digests == {p.resolve(): sha256(p) for p in files}
    assert first.hashed_bytes == sum(p.stat().st_size for p in files)

    again = FileHasher(cache)
    assert again.hash_all(files) == digests
    assert again.hashed_bytes == 0  # nothing read: every file came from the cache

    files[1].write_text("sequence,label\nTTTT,1\n")  # changed content and size
    changed = FileHasher(cache)
    assert changed.hash_all(files)[files[1].resolve()] == sha256(files[1])
    assert changed.hashed_bytes == files[1].stat().st_size


def test_data_digest_ignores_where_the_data_lies_but_not_what_it_is():
    files = [{"role": "gue", "name": "tf/0/train.csv", "sha256": "a" * 64, "path": "/x/a"},
             {"role": "gue", "name": "tf/0/dev.csv", "sha256": "b" * 64, "path": "/x/b"}]
    moved = [{**f, "path": "/elsewhere" + f["path"]} for f in reversed(files)]
    assert data_digest(files) == data_digest(moved)
    edited = [files[0], {**files[1], "sha256": "c" * 64}]
    assert data_digest(edited) != data_digest(files)


def test_slot_is_recovered_from_a_search_seed():
    for study_seed in (0, 7):
        for slot in (0, 1, 9, 250):
            assert inverse_search_seed(study_seed, search_seed(study_seed, slot)) == slot
    assert inverse_search_seed(0, 1) is None  # odd seeds are replicates'
    assert inverse_search_seed(7, search_seed(0, 3)) is None  # another study seed's


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_git_state_names_the_commit_and_what_is_uncommitted(tmp_path):
    from ablate.environment import git_state

    package = tmp_path / "repo" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    repo = package.parent
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "one")
    state = git_state(package)
    assert state["commit"] == git(repo, "rev-parse", "HEAD") and state["dirty"] is False

    (repo / "notes.txt").write_text("untracked, outside the package\n")
    assert git_state(package)["dirty"] is False
    (package / "new.py").write_text("y = 2\n")  # untracked inside the package: it runs
    assert git_state(package)["dirty"] is True
    (package / "new.py").unlink()
    (package / "__init__.py").write_text("x = 2\n")
    dirty = git_state(package)
    assert dirty["dirty"] is True and dirty["changed"] == ["pkg/__init__.py"]
    assert dirty["diff_sha256"] == hashlib.sha256(
        subprocess.run(["git", "-C", str(repo), "diff", "HEAD"], capture_output=True,
                       text=True).stdout.encode()).hexdigest()

    outside = tmp_path / "installed" / "pkg"
    outside.mkdir(parents=True)
    (outside / "__init__.py").write_text("")
    assert git_state(outside)["commit"] == "unknown"


def test_study_files_match_the_published_checksums_of_real_gue(real_gue):
    """Hashes of real GUE files equal the checksums published beside the copy."""
    from ablate.spec import parse_study

    sums_file = real_gue.parent / "SHA256SUMS.tsv"
    if not sums_file.is_file():
        pytest.skip(f"no {sums_file}")
    with open(sums_file) as handle:
        published = {row["path"]: row["sha256"] for row in csv.DictReader(handle, delimiter="\t")}
    spec = parse_study({
        "name": "sums", "data": {"gue_dir": str(real_gue), "tasks": ["prom/prom_core_tata",
                                                                      "EMP/H3"]},
        "axes": {"architecture": ["cnn"], "tokenizer": ["char"]},
        "budget": {"trials_per_cell": 1, "max_epochs": 1},
    })
    files = study_files(spec, real_gue)
    assert {f["name"] for f in files} == {
        "prom/prom_core_tata/train.csv", "prom/prom_core_tata/dev.csv",
        "prom/prom_core_tata/test.csv", "EMP/H3/dev.csv", "EMP/H3/test.csv"}  # H3: no train
    digests = FileHasher(None).hash_all(Path(f["path"]) for f in files)
    for f in files:
        assert digests[Path(f["path"])] == published[f"GUE/{f['name']}"], f["name"]


# --- a real tiny study ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study():
    return tiny_study()


@pytest.fixture(scope="module")
def info(study):
    from ablate.tracking.reader import provenance

    return provenance(study.tracking_uri, study.name)


def sweep_runs(study, stage: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(study.tracking_uri)
    experiment = client.get_experiment_by_name(study.name).experiment_id
    return client.search_runs(
        [experiment], f"{tag_filter(Tag.STAGE, stage)} and {tag_filter(Tag.SWEEP, study.sweep)}",
        max_results=1000)


@pytest.mark.integration
def test_sweep_run_holds_every_part(study, info):
    from mlflow import MlflowClient

    (run,) = sweep_runs(study, Stage.SWEEP)
    assert run.info.run_id == info["run_id"] and run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags[Tag.STUDY] == study.name and tags[Tag.SWEEP] == study.sweep
    assert tags[Tag.SCHEMA_VERSION] == str(SCHEMA_VERSION)
    assert tags[Tag.ABLATE_VERSION] == metadata.version("ablate")
    assert tags[Tag.DATA_DIGEST] == info["data"]["digest"]
    assert tags[Tag.DATA_FILES] == str(len(info["data"]["files"]))
    assert tags[Tag.SUGGESTIONS] == str(len(info["suggestions"]))
    listed = {Path(a.path).name for a in MlflowClient(study.tracking_uri).list_artifacts(
        run.info.run_id, "provenance")}
    assert {*START_PARTS, SUGGESTIONS} <= listed

    assert info["spec"] == study.spec_path.read_text()  # as written, comment included
    env = info["environment"]
    for name in ("torch", "ray", "mlflow", "optuna", "pyarrow", "numpy"):
        assert env["packages"][name] == metadata.version(name)
    commit = env["ablate"]["git"]["commit"]
    assert tags[Tag.GIT_COMMIT] == commit
    here = Path(__file__).resolve().parents[1]
    if (here / ".git").exists():  # the tests run from the package's own checkout
        assert commit == git(here, "rev-parse", "HEAD")
    hardware = info["hardware"]
    assert hardware["driver"]["cpu_count"] == os.cpu_count()
    assert hardware["cluster"]["nodes"] and all(
        n["resources"].get("CPU", 0) >= 1 for n in hardware["cluster"]["nodes"])


@pytest.mark.integration
def test_data_hashes_are_the_files_own(study, info):
    data = info["data"]
    roles = {f["role"] for f in data["files"]}
    assert roles == {"gue"}
    assert {f["split"] for f in data["files"]} == {"train", "dev", "test"}
    for f in data["files"]:
        assert f["sha256"] == sha256(f["path"]), f["name"]
        assert f["bytes"] == Path(f["path"]).stat().st_size
    assert data["digest"] == data_digest(data["files"])
    (tokenizer,) = data["tokenizers"]
    assert tokenizer["value"] == "char"
    for path, hashes in tokenizer["files"].items():
        assert hashes["sha256"] == sha256(path)
    table = data_hashes(info)
    assert list(table["sha256"]) == [f["sha256"] for f in data["files"]]


@pytest.mark.integration
def test_search_spaces_are_what_the_cells_searched(study, info):
    cells = {r.data.tags[Tag.CELL]: r for r in sweep_runs(study, Stage.CELL)}
    recorded = info["search_spaces"]["cells"]
    assert set(recorded) == set(cells)
    for name, run in cells.items():
        assert recorded[name]["search_space"] == json.loads(run.data.tags[Tag.SEARCH_SPACE])
        assert recorded[name]["max_epochs"] == 1
    assert info["search_spaces"]["searcher"]["budget"]["trials_per_cell"] == TRIALS_PER_CELL


@pytest.mark.integration
def test_one_suggestion_per_trial_and_replicate_run(study, info):
    suggestions = {s["run_id"]: s for s in info["suggestions"]}
    runs = sweep_runs(study, Stage.TRIAL) + sweep_runs(study, Stage.REPLICATE)
    assert len(info["suggestions"]) == len(suggestions) == len(runs)
    assert len(runs) == study.cells * (TRIALS_PER_CELL + study.replicates)
    assert set(suggestions) == {r.info.run_id for r in runs}
    slots: dict[str, set[int]] = {}
    for run in runs:
        s = suggestions[run.info.run_id]
        tags = run.data.tags
        assert s["params"] == run.data.params  # exactly, as MLflow holds them
        assert (s["cell"], s["stage"], s["trial_id"], s["outcome"]) == (
            tags[Tag.CELL], tags[Tag.STAGE], tags[Tag.TRIAL_ID], tags[Tag.OUTCOME])
        assert s["seed"] == int(run.data.params["seed"])
        assert set(s["searched"]) <= set(run.data.params)
        for name, value in s["searched"].items():
            assert str(value) == run.data.params[name]
        if s["stage"] == Stage.TRIAL:
            assert s["seed"] == search_seed(0, s["slot"])
            slots.setdefault(s["cell"], set()).add(s["slot"])
        else:
            assert s["source_trial"] == tags[Tag.SOURCE_TRIAL]
    assert all(v == set(range(TRIALS_PER_CELL)) for v in slots.values()) and len(slots) == 2
    starts = [s["start_time"] for s in info["suggestions"]]
    assert starts == sorted(starts)  # in the order the runs started


@pytest.mark.integration
def test_sweep_run_changes_no_table(study):
    from ablate import analysis
    from ablate.tracking.reader import latest_sweep_run

    latest = latest_sweep_run(study.tracking_uri, study.name)
    assert latest.data.tags[Tag.STAGE] == Stage.CELL
    with_sweep = analysis.runs(study.tracking_uri, study.name)
    stage = with_sweep[tag_column(Tag.STAGE)]
    assert (stage == Stage.SWEEP).sum() == 1  # the sweep run is among the sweep's runs...
    without = with_sweep[stage != Stage.SWEEP].reset_index(drop=True)

    def tables(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        trials = analysis.search_trials(frame)
        return {"trials": trials, "replicates": analysis.replicates(frame),
                "cells": analysis.cells(trials, frame, cell_runs=frame),
                "caveats": analysis.caveats(frame),
                "cost_benefit": analysis.cost_benefit(frame, {})}

    ours, theirs = tables(with_sweep), tables(without)
    for name, table in ours.items():  # ...but in none of the tables built from them
        pd.testing.assert_frame_equal(table.drop(columns=["best_params"], errors="ignore"),
                                      theirs[name].drop(columns=["best_params"],
                                                        errors="ignore"), obj=name)
    assert len(ours["trials"]) == study.cells * TRIALS_PER_CELL
    assert len(ours["cells"]) == study.cells
    assert list(ours["cells"]["best_params"]) == list(theirs["cells"]["best_params"])
    assert analysis.search_spaces(with_sweep) == analysis.search_spaces(without)


@pytest.mark.integration
def test_report_lines_say_where_to_look(info):
    text = "\n".join(report_lines(info))
    assert info["data"]["digest"][:16] in text
    assert info["environment"]["ablate"]["git"]["commit"][:12] in text
    assert f"{len(info['suggestions'])} configurations" in text and info["run_id"] in text
    assert f"{len(info['data']['files'])} files" in text


@pytest.mark.integration
def test_a_resumed_sweep_reuses_its_run(study, info):
    from ablate.tracking.reader import provenance

    run_ablate("run", str(study.spec_path), "--resume", cwd=study.folder)
    (run,) = sweep_runs(study, Stage.SWEEP)  # still one
    assert run.info.run_id == info["run_id"]
    again = provenance(study.tracking_uri, study.name)
    (resume,) = again["resumes"]
    assert resume["number"] == 1 and run.data.tags[Tag.RESUMES] == "1"
    # Same machine, data, spec: nothing but (at most) the code's state differs.
    assert set(resume["changes"]["changed"]) <= {"environment.json"}
    assert again["data"] == info["data"] and again["spec"] == info["spec"]
    assert len(again["suggestions"]) == len(info["suggestions"])
