"""What a referee needs to check a study: its spec, code, packages, data, hardware, suggestions.

Every sweep gets one MLflow run of stage ``Stage.SWEEP`` in the study's experiment (tags
``Tag.STUDY``, ``Tag.SWEEP``, ``Tag.STAGE``, the schema version and short summaries: ablate's
version and commit, the data digest and file count). Its artifacts, under ``provenance/``:

- ``spec.yaml``: the study spec as written (the file's text), ``spec_resolved.json``: as
  validated, defaults filled in;
- ``search_spaces.json``: per cell, the ranges it searched (the cell run's
  ``Tag.SEARCH_SPACE``), its model, its epoch budget, and the searcher's budget and seed;
- ``environment.json``: ablate's version and git commit (with a dirty flag and a hash of the
  uncommitted diff), Python and the main packages' versions;
- ``data.json``: the sha256 of every file the study reads (GUE CSVs of its tasks, FASTA
  corpora, external checkpoints), a digest over them, and every tokenizer's hashes;
- ``hardware.json``: the driver (CPU model, cores, memory, GPUs) and every Ray node's
  resources;
- ``suggestions.jsonl`` (written at the sweep's end): one line per trial and replicate run, with
  its cell, stage, slot, seed, params and outcome. A seeded TPE reproduces only its random
  start-up trials (later suggestions depend on the order trials finished), so replaying a study
  needs the suggestions themselves.

The run is created when the sweep is opened, before Ray starts, with the sweep's spec
fingerprint (``spec_fingerprint``: tag ``Tag.SPEC_FINGERPRINT``, and ``fingerprint.json`` with
every part it covers) and its budget (``Tag.BUDGET``); ``--resume`` refuses a spec whose
fingerprint differs, naming the keys that changed. ``Tag.SEARCH_STARTED`` is set when the
search's Tuner starts fitting: a launch without it (and without trials) never started.

A resumed sweep reuses its run; what differs in the resuming launch is written beside the first
launch's files, under ``provenance/resume-<n>/`` (``changes.json`` names the parts). The run
is closed as soon as it is written, never left RUNNING (a resumed driver closes RUNNING runs of
its sweep as lost trials), and closed again with the sweep's status at its end.

Hashing is cached by path, size and modification time in the study's work dir, so a re-run
hashes only what changed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ablate.environment import environment, hardware
from ablate.errors import AblateError
from ablate.hashing import FileHasher, data_digest
from ablate.tracking.reader import (
    PROVENANCE_DIR,
    find_runs,
    find_sweep_run,
    read_artifact_json,
    read_provenance,
)
from ablate.tracking.schema import SCHEMA_VERSION, Stage, Tag, tag_filter

if TYPE_CHECKING:
    import pandas as pd

    from ablate.spec import SearchSpace, StudySpec
    from ablate.study import PreparedStudy, Sweep
    from ablate.tracking.reader import SweepInfo

# The parts written at a sweep's start, each compared again when the sweep is resumed.
START_PARTS = ("spec.yaml", "spec_resolved.json", "search_spaces.json", "environment.json",
               "data.json", "hardware.json")
SUGGESTIONS = "suggestions.jsonl"
HASH_CACHE = "sha256-cache.json"  # in <work_dir>/provenance/
# The tokenizer files of a tokenizer folder (a checkpoint's tokenizer brings its own).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.txt", "vocab.json", "merges.txt")


# --- what a study reads ----------------------------------------------------------------------


def study_files(spec: StudySpec, gue_root: Path) -> list[dict[str, Any]]:
    """Every file a study reads, without hashes: role (``gue``, ``corpus``, ``checkpoint``),
    a portable name, path, and task/split for GUE files."""
    from ablate.data.gue import SPLITS, split_path

    files: dict[Path, dict[str, Any]] = {}

    def add(role: str, name: str, path: Path, **extra: Any) -> None:
        path = Path(path).resolve()
        if path.is_file() and path not in files:
            files[path] = {"role": role, "name": name, "path": str(path), **extra}

    def gue(task: str, split: str, role: str = "gue") -> None:
        path = split_path(gue_root, task, split)
        add(role, f"{task}/{split}.csv", path, task=task, split=split)

    for task in spec.data.tasks:
        for split in SPLITS:
            gue(task, split)
    for value in spec.axes.pretraining:
        kind, _, name = value.partition(":")
        if kind != "mlm" or name not in spec.pretrain_specs:
            continue
        corpus = spec.pretrain_specs[name].corpus
        if isinstance(corpus.gue_tasks, list):  # "self" and the default read study tasks
            for task in corpus.gue_tasks:
                gue(task, "train", "corpus")
        for fasta in corpus.fasta or []:
            path = spec.path(fasta)
            add("corpus", path.name, path)
    for arch in spec.axes.architecture:
        external = spec.external_checkpoints.get(arch)
        if external is None:
            continue
        folder = spec.path(external.path)
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            relative = path.relative_to(folder)
            if path.is_file() and not any(p.startswith(".") for p in relative.parts):
                add("checkpoint", f"{arch}/{relative.as_posix()}", path)
    return list(files.values())


def tokenizer_records(spec: StudySpec, prepared: PreparedStudy,
                      hasher: FileHasher) -> list[dict[str, Any]]:
    """Every tokenizer of the study: its axis value, the file trials use (sha256 and the
    content hash its shards are keyed by) and, for a loaded one, its source folder's files."""
    from ablate.tokenization import load_tokenizer, tokenizer_hash

    records = []
    for value, choice in spec.tokenizer_choices().items():
        used = sorted({item.tokenizer_path for (_, tok), item in prepared.inputs.items()
                       if tok == value})
        record: dict[str, Any] = {"value": value, "kind": choice.kind, "files": {}}
        for path in used:
            digest = hasher.hash_all([Path(path)])
            record["files"][path] = {
                "sha256": next(iter(digest.values()), None),
                "content_hash": tokenizer_hash(load_tokenizer(Path(path))),
            }
        if choice.path is not None:
            folder = Path(choice.path).parent
            sources = [folder / n for n in _TOKENIZER_FILES if (folder / n).is_file()]
            record["source"] = str(choice.path)
            record["source_files"] = {p.name: d for p, d in hasher.hash_all(sources).items()}
        records.append(record)
    return records


def data_record(spec: StudySpec, prepared: PreparedStudy, hasher: FileHasher,
                progress: Callable[[str], None] = print) -> dict[str, Any]:
    """``data.json``: every file the study reads with its sha256, their digest, tokenizers."""
    files = study_files(spec, prepared.gue_root)
    digests = hasher.hash_all([Path(f["path"]) for f in files], progress)
    for f in files:
        f["bytes"] = Path(f["path"]).stat().st_size
        f["sha256"] = digests[Path(f["path"])]
    return {
        "data_tag": prepared.data_tag,
        "gue_root": str(prepared.gue_root),
        "digest": data_digest(files),
        "files": files,
        "tokenizers": tokenizer_records(spec, prepared, hasher),
    }


def search_space_record(spec: StudySpec, prepared: PreparedStudy) -> dict[str, Any]:
    """``search_spaces.json``: per cell what it searched (the same JSON its cell run's
    ``Tag.SEARCH_SPACE`` holds), its model and epoch budget; and the searcher's settings."""
    from ablate.study import _ranges_json  # the very text the cell runs are tagged with

    cells = {}
    for cell in prepared.cells:
        model = prepared.models[cell.name]
        cells[cell.name] = {
            "architecture": cell.architecture, "pretraining": cell.pretraining,
            "tokenizer": cell.tokenizer, "task": cell.task,
            "search_space": json.loads(_ranges_json(prepared.spaces[cell.architecture])),
            "model": {"preset": model.preset, "overrides": dict(model.overrides),
                      "token_limit": model.token_limit},
            "max_epochs": spec.budget.epochs_for(cell.task),
        }
    return {
        "searcher": {"sampler": "optuna TPESampler(multivariate=True), one study per cell",
                     "seed": spec.seed, "budget": spec.budget.model_dump(mode="json")},
        "cells": cells,
    }


def _steady(resources: dict[str, Any]) -> dict[str, Any]:
    """Ray resources without those set anew at every start (memory measured as free then,
    the node's own ``node:<ip>`` marker)."""
    return {k: v for k, v in resources.items()
            if k not in ("memory", "object_store_memory") and not k.startswith("node:")}


def _comparable(name: str, content: Any) -> Any:
    """A part without what changes on every launch (Ray node ids, addresses, free memory)."""
    if name != "hardware.json" or not isinstance(content, dict):
        return content
    cluster = content.get("cluster") or {}
    nodes = [{"hostname": n.get("hostname"), "resources": _steady(n.get("resources") or {})}
             for n in cluster.get("nodes", [])]
    return {"driver": content.get("driver"), "nodes": sorted(nodes, key=json.dumps),
            "total": _steady(cluster.get("total") or {})}


# --- what identifies a sweep: its spec fingerprint --------------------------------------------

FINGERPRINT = "fingerprint.json"  # provenance/fingerprint.json: {"sha256": ..., "parts": {...}}
# Keys of the budget and of a pretraining recipe a resume may change: how often state is
# checkpointed says nothing about what a cell trains or how it is searched.
RESUMABLE_KEYS = frozenset({"checkpoint_every"})


@dataclass(frozen=True)
class Fingerprint:
    """What a sweep's cells train and how they are searched, as resolved from its spec.

    ``parts`` maps each key, named as the spec names it (``budget.trials_per_cell``,
    ``search_spaces.cnn.params.learning_rate.high``), to its value; ``sha256`` is the hash of
    their canonical JSON (sorted keys, no spaces)."""

    sha256: str
    parts: dict[str, Any]


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """``value`` as dotted keys under ``prefix``, one per leaf (an empty mapping has none)."""
    if isinstance(value, dict):
        for key in sorted(value):
            _flatten(f"{prefix}.{key}", value[key], out)
    else:
        out[prefix] = value


def _without_cadence(dumped: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dumped.items() if k not in RESUMABLE_KEYS}


def spec_fingerprint(spec: StudySpec, spaces: dict[str, SearchSpace]) -> Fingerprint:
    """The parts of a resolved spec that may not change while a sweep is resumed.

    - cells: the axes, the tasks (and ``data.drop_train_duplicates``), the expanded cell list,
      each architecture's resolved model (preset, overrides), the tokenizer options the axis
      uses and the recipe of every ``mlm:`` pretraining;
    - budget: every ``budget`` key (trials, epochs, concurrency, ASHA, startup trials,
      patience, retries) but ``checkpoint_every``, the study ``seed`` and ``replicates``;
    - search spaces: each architecture's resolved ranges (the JSON its cells are tagged with);
    - resources: ``resources`` per trial.

    Prices, tracking, contrasts, paths (data folder, storage, work dir) and the Ray address
    may change; a change of data is recorded (and warned of) by the resume's provenance.
    ``spaces`` are the study's search spaces by architecture (``load_spaces``)."""
    from ablate.spec import expand_cells
    from ablate.study import _ranges_json

    parts: dict[str, Any] = {}
    _flatten("axes", spec.axes.model_dump(mode="json"), parts)
    parts["data.tasks"] = list(spec.data.tasks)
    parts["data.drop_train_duplicates"] = spec.data.drop_train_duplicates
    parts["cells"] = [cell.name for cell in expand_cells(spec)]
    _flatten("budget", _without_cadence(spec.budget.model_dump(mode="json")), parts)
    parts["seed"] = spec.seed
    parts["replicates"] = list(spec.replicates)
    _flatten("resources", spec.resources.model_dump(mode="json"), parts)
    if "kmer" in spec.axes.tokenizer:
        parts["tokenizers.kmer_k"] = spec.tokenizers.kmer_k
    if "bpe" in spec.axes.tokenizer:
        parts["tokenizers.bpe_vocab_size"] = spec.tokenizers.bpe_vocab_size
    for arch in spec.axes.architecture:
        _flatten(f"search_spaces.{arch}", json.loads(_ranges_json(spaces[arch])), parts)
        if arch in spec.external_checkpoints:
            model: dict[str, Any] = {"preset": "checkpoint"}  # its size is its config
        else:
            choice = spec.models.get(arch)
            model = {"preset": (choice.preset if choice else None) or spaces[arch].preset,
                     "overrides": dict(choice.overrides) if choice else {}}
        _flatten(f"models.{arch}", json.loads(json.dumps(model)), parts)
    for value in spec.axes.pretraining:
        kind, _, name = value.partition(":")
        if kind == "mlm":
            recipe = spec.pretrain_specs[name].model_dump(mode="json")
            _flatten(f"pretrain_specs.{name}", _without_cadence(recipe), parts)
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return Fingerprint(hashlib.sha256(text.encode()).hexdigest(), json.loads(text))


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


_ABSENT = _Absent()


def _shown(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    return value if isinstance(value, str) else json.dumps(value)


def _under(parts: dict[str, Any], prefix: str) -> list[str]:
    return [k for k in parts if k == prefix or k.startswith(f"{prefix}.")]


def fingerprint_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """One line per key whose value differs (``budget.trials_per_cell: 4 -> 6``), in the
    order of ``after`` then keys only ``before`` has; cells added or removed by name, and a
    group of keys only one side has (an architecture's search space) as one line."""
    lines, said = [], set()
    for key in [*after, *(k for k in before if k not in after)]:
        old, new = before.get(key, _ABSENT), after.get(key, _ABSENT)
        if old == new or key in said:
            continue
        if key == "cells" and isinstance(old, list) and isinstance(new, list):
            added = [c for c in new if c not in old]
            removed = [c for c in old if c not in new]
            what = [f"added {', '.join(added)}"] if added else []
            what += [f"removed {', '.join(removed)}"] if removed else []
            lines.append(f"cells: {'; '.join(what) or 'reordered'}")
            continue
        if old is _ABSENT or new is _ABSENT:  # the widest group only one side has
            present, other = (after, before) if old is _ABSENT else (before, after)
            names = key.split(".")
            for n in range(1, len(names)):
                prefix = ".".join(names[:n])
                if not _under(other, prefix):
                    group = _under(present, prefix)
                    if len(group) > 1:
                        lines.append(f"{prefix}: {'added' if present is after else 'removed'}")
                        said.update(group)
                    break
            if key in said:
                continue
        lines.append(f"{key}: {_shown(old)} -> {_shown(new)}")
    return lines


def sweep_budget(spec: StudySpec) -> dict[str, int]:
    """``Tag.BUDGET``: cells, trials per cell and replicates per cell of a sweep."""
    from ablate.spec import expand_cells

    return {"cells": len(expand_cells(spec)), "trials_per_cell": spec.budget.trials_per_cell,
            "replicates": len(spec.replicates)}


def _record_fingerprint(client: Any, run_id: str, spec: StudySpec,
                        fingerprint: Fingerprint) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(Tag.SPEC_FINGERPRINT, fingerprint.sha256),
                                   RunTag(Tag.BUDGET, json.dumps(sweep_budget(spec)))])
    _log(client, run_id, PROVENANCE_DIR,
         {FINGERPRINT: {"sha256": fingerprint.sha256, "parts": fingerprint.parts}})


def open_sweep_run(client: Any, experiment_id: str, spec: StudySpec, sweep: str,
                   data_tag: str, fingerprint: Fingerprint) -> str:
    """Create a new sweep's provenance run, with its fingerprint and budget; its run id.

    Written when the sweep is opened, before Ray starts; the rest of its provenance is added
    by ``record_sweep_start``."""
    tags = {Tag.STUDY: spec.name, Tag.SWEEP: sweep, Tag.STAGE: Stage.SWEEP,
            Tag.SCHEMA_VERSION: str(SCHEMA_VERSION), Tag.DATA: data_tag}
    run_id = client.create_run(experiment_id, tags=tags,
                               run_name=f"provenance {sweep}").info.run_id
    _record_fingerprint(client, run_id, spec, fingerprint)
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def check_resume(client: Any, record: SweepInfo, spec: StudySpec, fingerprint: Fingerprint, *,
                 new_sweep_command: str, progress: Callable[[str], None] = print) -> None:
    """Refuse to resume ``record`` with a spec whose fingerprint differs from the one recorded
    when the sweep was opened, naming the keys that changed.

    A sweep opened before fingerprints were recorded is resumed with a warning, and this
    launch's fingerprint is recorded on it, so later resumes are checked against it."""
    run = record.sweep_run
    if record.fingerprint is None:
        progress(f"warning: sweep {record.sweep} was opened before ablate recorded a spec "
                 "fingerprint, so it cannot tell whether its cells, budget, search spaces or "
                 "resources changed since; resuming it anyway (provenance/resume-<n> records "
                 "what differs from its first launch). This launch's fingerprint is recorded: "
                 "later resumes are checked against it")
        if run is not None:
            _record_fingerprint(client, run.info.run_id, spec, fingerprint)
        return
    if record.fingerprint == fingerprint.sha256:
        return
    stored = read_artifact_json(client, run.info.run_id, f"{PROVENANCE_DIR}/{FINGERPRINT}")
    changes = fingerprint_changes(stored["parts"], fingerprint.parts) if stored else []
    if not changes:
        changes = [f"fingerprint {record.fingerprint[:12]} -> {fingerprint.sha256[:12]} (the "
                   "sweep's parts are not recorded, so the keys cannot be named)"]
    shown = changes[:20] + ([f"... and {len(changes) - 20} more"] if len(changes) > 20 else [])
    raise AblateError(
        f"sweep {record.sweep} cannot be resumed with this spec: what its cells train or how "
        "they are searched changed since it was opened (cells, budget, search spaces and "
        "resources must stay as they were):\n  " + "\n  ".join(shown) + "\n"
        "Resuming would mix two budgets in one sweep. Start a new sweep instead: "
        f"{new_sweep_command} (without --resume), or put the spec back as it was."
    )


def mark_search_started(client: Any, run_id: str) -> None:
    """Set ``Tag.SEARCH_STARTED`` on a sweep run (once: a resume keeps the first time)."""
    if Tag.SEARCH_STARTED not in client.get_run(run_id).data.tags:
        client.set_tag(run_id, Tag.SEARCH_STARTED, time.strftime("%Y-%m-%dT%H:%M:%S%z"))


# --- the sweep run ---------------------------------------------------------------------------


def spec_text(spec: StudySpec, spec_file: str | Path | None) -> str:
    """The spec as written (the file's text) or, without a file, the validated spec as YAML."""
    if spec_file is not None and Path(spec_file).is_file():
        return Path(spec_file).read_text()
    dumped = spec.model_dump(mode="json", exclude={"base_dir"})
    return ("# no spec file was given: the validated spec, defaults filled in\n"
            + yaml.safe_dump(dumped, sort_keys=False))


def start_parts(spec: StudySpec, prepared: PreparedStudy, spec_file: str | Path | None,
                progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Artifact name -> content of everything recorded at a sweep's start."""
    hasher = FileHasher(spec.work_path / "provenance" / HASH_CACHE)
    return {
        "spec.yaml": spec_text(spec, spec_file),
        "spec_resolved.json": spec.model_dump(mode="json"),
        "search_spaces.json": search_space_record(spec, prepared),
        "environment.json": environment(),
        "data.json": data_record(spec, prepared, hasher, progress),
        "hardware.json": hardware(),
    }


def _log(client: Any, run_id: str, folder: str, parts: dict[str, Any]) -> None:
    for name, content in parts.items():
        path = f"{folder}/{name}"
        if isinstance(content, str):
            client.log_text(run_id, content, path)
        else:
            client.log_text(run_id, json.dumps(content, indent=2, sort_keys=True) + "\n", path)


def _summary_tags(parts: dict[str, Any]) -> dict[str, str]:
    env, data = parts["environment.json"], parts["data.json"]
    git = env["ablate"]["git"]
    return {Tag.ABLATE_VERSION: str(env["ablate"]["version"]),
            Tag.GIT_COMMIT: str(git["commit"]),
            Tag.GIT_DIRTY: str(git.get("dirty")).lower(),
            Tag.DATA_DIGEST: data["digest"],
            Tag.DATA_FILES: str(len(data["files"]))}


def record_sweep_start(spec: StudySpec, prepared: PreparedStudy, sweep: Sweep, *,
                       spec_file: str | Path | None = None,
                       progress: Callable[[str], None] = print) -> str:
    """Write the sweep's provenance run (or, resumed, add what differs to it); its run id."""
    from mlflow.entities import RunTag

    parts = start_parts(spec, prepared, spec_file, progress)
    client = sweep.client
    run = find_sweep_run(client, sweep.experiment_id, sweep.sweep)
    if run is None:  # opened without one (open_sweep writes it): written here
        tags = {Tag.STUDY: spec.name, Tag.SWEEP: sweep.sweep, Tag.STAGE: Stage.SWEEP,
                Tag.SCHEMA_VERSION: str(SCHEMA_VERSION), Tag.DATA: prepared.data_tag}
        run_id = client.create_run(sweep.experiment_id, tags=tags,
                                   run_name=f"provenance {sweep.sweep}").info.run_id
    else:
        run_id = run.info.run_id
    summary = [RunTag(k, v) for k, v in _summary_tags(parts).items()]
    if run is None or not sweep.resumed:  # this launch opened the sweep: its first record
        client.log_batch(run_id, tags=summary)
        _log(client, run_id, PROVENANCE_DIR, parts)
        client.set_terminated(run_id, status="FINISHED")
        progress(f"provenance: run {run_id}, data digest {parts['data.json']['digest'][:12]} "
                 f"over {len(parts['data.json']['files'])} files")
        return run_id
    if run.info.status == "RUNNING":  # the first driver stopped while writing it
        client.set_terminated(run_id, status="FINISHED")
    stored = read_provenance(client, run_id)
    missing = {name: parts[name] for name in START_PARTS if Path(name).stem not in stored}
    _log(client, run_id, PROVENANCE_DIR, missing)  # what the first driver never wrote
    if "spec.yaml" in missing:
        client.log_batch(run_id, tags=summary)
    number = len(stored.get("resumes", [])) + 1
    changed = [name for name in START_PARTS if name not in missing and _comparable(
        name, stored.get(Path(name).stem)) != _comparable(name, parts[name])]
    folder = f"{PROVENANCE_DIR}/resume-{number}"
    _log(client, run_id, folder, {name: parts[name] for name in changed})
    _log(client, run_id, folder, {"changes.json": {
        "resumed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changed": changed}})
    client.set_tag(run_id, Tag.RESUMES, str(number))
    serious = [n for n in changed if n in ("spec.yaml", "search_spaces.json", "data.json")]
    note = f"; WARNING: {', '.join(serious)} differ from the first launch" if serious else ""
    progress(f"provenance: resume {number} of run {run_id} "
             f"({', '.join(changed) or 'nothing'} changed){note}")
    return run_id


def inverse_search_seed(study_seed: int, seed: int) -> int | None:
    """The slot whose search seed is ``seed`` (``ablate.trial.search_seed``), if any."""
    from ablate.trial import search_seed

    first = search_seed(study_seed, 0)
    step = search_seed(study_seed, 1) - first
    slot, rest = divmod(seed - first, step)
    return slot if rest == 0 and slot >= 0 and search_seed(study_seed, slot) == seed else None


def _maybe_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def suggestion_rows(runs: list[Any], study_seed: int | None = None) -> list[dict[str, Any]]:
    """One record per trial and replicate run of a sweep, in the order they started.

    ``params`` are the run's params exactly as MLflow holds them; ``searched`` the searched
    ones typed by the cell's ranges (taken from the cell runs among ``runs``). ``slot`` and
    ``optuna_trial`` come from the run's params or tags when present; a search trial's slot is
    otherwise recovered from its seed (``slot_from: "seed"``).
    """
    from ablate.importance import typed_params

    spaces = {r.data.tags.get(Tag.CELL): r.data.tags.get(Tag.SEARCH_SPACE) for r in runs
              if r.data.tags.get(Tag.STAGE) == Stage.CELL}
    staged = [r for r in runs if r.data.tags.get(Tag.STAGE) in (Stage.TRIAL, Stage.REPLICATE)]
    staged.sort(key=lambda r: (r.info.start_time or 0, r.data.tags.get(Tag.TRIAL_ID, "")))
    rows = []
    for run in staged:
        tags, params, metrics = run.data.tags, dict(run.data.params), run.data.metrics
        stage, cell = tags.get(Tag.STAGE), tags.get(Tag.CELL)
        seed = _maybe_int(params.get("seed"))
        slot = _maybe_int(params.get("slot", tags.get("ablate.slot")))
        slot_from = "recorded" if slot is not None else None
        if slot is None and stage == Stage.TRIAL and seed is not None and study_seed is not None:
            slot = inverse_search_seed(study_seed, seed)
            slot_from = "seed" if slot is not None else None
        try:
            searched = typed_params(params, spaces[cell]) if spaces.get(cell) else {}
        except ValueError:
            searched = {}
        rows.append({
            "stage": stage, "cell": cell, "trial_id": tags.get(Tag.TRIAL_ID),
            "run_id": run.info.run_id, "status": run.info.status,
            "outcome": tags.get(Tag.OUTCOME),
            "optuna_trial": _maybe_int(params.get("optuna_trial",
                                                  tags.get("ablate.optuna_trial"))),
            "slot": slot, "slot_from": slot_from, "seed": seed,
            "replicate": tags.get(Tag.REPLICATE_SEED), "source_trial": tags.get(Tag.SOURCE_TRIAL),
            "params": params, "searched": searched,
            "best_dev_score": metrics.get("best_dev_score"),
            "test_score": metrics.get("test_score"),
            "start_time": run.info.start_time, "end_time": run.info.end_time,
        })
    return rows


def record_sweep_end(sweep: Sweep, run_id: str, *, status: str = "FINISHED",
                     study_seed: int | None = None,
                     progress: Callable[[str], None] = print) -> int:
    """Write ``suggestions.jsonl`` (rebuilt from the sweep's runs) and close the sweep run
    with the sweep's ``status``; how many suggestions were recorded.

    After a failed sweep a failure here is only reported, so it never hides the sweep's own
    error; the suggestions so far are then recorded by the next ``--resume``.
    """
    try:
        client = sweep.client
        runs = find_runs(client, sweep.experiment_id, tag_filter(Tag.SWEEP, sweep.sweep))
        rows = suggestion_rows(runs, study_seed)
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        client.log_text(run_id, text, f"{PROVENANCE_DIR}/{SUGGESTIONS}")
        client.set_tag(run_id, Tag.SUGGESTIONS, str(len(rows)))
        client.set_terminated(run_id, status=status)
    except Exception as exc:
        if status == "FINISHED":
            raise
        progress(f"provenance: suggestions not recorded ({exc})")
        return 0
    progress(f"provenance: {len(rows)} suggestions recorded in run {run_id}")
    return len(rows)


# --- for the report --------------------------------------------------------------------------


def data_hashes(info: dict[str, Any]) -> pd.DataFrame:
    """The data files of a provenance record (``ablate.tracking.reader.provenance``), one row
    each: role, name, task, split, bytes, sha256, path (for a CSV beside the report)."""
    import pandas as pd

    columns = ["role", "name", "task", "split", "bytes", "sha256", "path"]
    files = (info.get("data") or {}).get("files") or []
    return pd.DataFrame([{c: f.get(c) for c in columns} for f in files], columns=columns)


def _gib(value: Any) -> str:
    return f"{value / 2**30:.0f} GiB" if isinstance(value, int | float) else "unknown"


def report_lines(info: dict[str, Any]) -> list[str]:
    """A few Markdown lines on a sweep's provenance (``ablate.tracking.reader.provenance``)."""
    env, data = info.get("environment") or {}, info.get("data") or {}
    hw = info.get("hardware") or {}
    git = (env.get("ablate") or {}).get("git") or {}
    commit = git.get("commit", "unknown")
    dirty = " (with uncommitted changes)" if git.get("dirty") else ""
    lines = [f"- ablate {(env.get('ablate') or {}).get('version', 'unknown')}, commit "
             f"`{commit[:12]}`{dirty}; Python {(env.get('python') or {}).get('version', '?')}"]
    packages = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v)
    if packages:
        lines.append(f"- Packages: {packages}")
    files = data.get("files") or []
    roles: dict[str, int] = {}
    for f in files:
        roles[f["role"]] = roles.get(f["role"], 0) + 1
    kinds = ", ".join(f"{n} {r}" for r, n in sorted(roles.items()))
    lines.append(f"- Data: {len(files)} files ({kinds or 'none'}), sha256 digest "
                 f"`{data.get('digest', 'unknown')[:16]}` ({data.get('data_tag', '')})")
    for tok in data.get("tokenizers") or []:
        hashes = ", ".join(f"`{(v.get('sha256') or '')[:12]}`" for v in tok["files"].values())
        lines.append(f"- Tokenizer `{tok['value']}`: tokenizer.json sha256 {hashes or 'none'}")
    driver = hw.get("driver") or {}
    gpus = driver.get("gpus") or []
    gpu_text = (", ".join(sorted({g["name"] for g in gpus})) + f" x{len(gpus)}") if gpus else \
        "no GPU"
    nodes = (hw.get("cluster") or {}).get("nodes") or []
    total = (hw.get("cluster") or {}).get("total") or {}
    lines.append(f"- Hardware: driver {driver.get('cpu_model', 'unknown')}, "
                 f"{driver.get('cpu_count', '?')} cores, {_gib(driver.get('memory_bytes'))}, "
                 f"{gpu_text}; Ray cluster of {len(nodes)} node(s), {total.get('CPU', 0):g} CPUs, "
                 f"{total.get('GPU', 0):g} GPUs")
    suggestions = info.get("suggestions")
    where = f"MLflow run `{info.get('run_id', '?')}`, `{PROVENANCE_DIR}/{SUGGESTIONS}`"
    lines.append(f"- Suggestions: {len(suggestions)} configurations recorded ({where})"
                 if suggestions is not None else
                 f"- Suggestions: not recorded (the sweep did not reach its end); {where}")
    resumes = info.get("resumes") or []
    if resumes:
        changed = sorted({c for r in resumes for c in (r.get("changes") or {}).get("changed", [])})
        lines.append(f"- Resumed {len(resumes)} time(s); changed on resume: "
                     f"{', '.join(changed) or 'nothing'}")
    return lines
