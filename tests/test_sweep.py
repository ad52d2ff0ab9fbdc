"""The searcher and scheduler that keep cells level and independent, driven directly."""

import os

import optuna
import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.search import Searcher

from ablate.spec import DEFAULT_SEARCH_SPACE_DIR, Cell, load_search_space
from ablate.tracking.schema import MetricName
from ablate.trial import TrialConfig
from ablate.tune_plugins import TRIALS_SEEN, CellScheduler, CellSearcher


@pytest.fixture(autouse=True)
def _no_trials_seen():
    TRIALS_SEEN.clear()
    yield
    TRIALS_SEEN.clear()


CELLS = [Cell("convnova", "none", "char", "tf/0"), Cell("transformer", "none", "bpe", "tf/0")]


def make_searcher(trials=3, max_epochs=4, concurrent=2, seed=0):
    spaces = {a: load_search_space(DEFAULT_SEARCH_SPACE_DIR, a) for a in ("convnova",
                                                                           "transformer")}
    return CellSearcher(CELLS, spaces, trials_per_cell=trials, max_epochs=max_epochs,
                        max_concurrent=concurrent, seed=seed)


def result(value, epoch):
    return {MetricName.BEST_DEV_SCORE: value, "training_iteration": epoch}


def test_cells_stay_level_and_budget_is_exact():
    searcher = make_searcher(trials=3, concurrent=1)
    issued = []
    for n in range(6):
        config = searcher.suggest(f"t{n}")
        assert config is not None
        issued.append(config["cell"])
        assert searcher.suggest(f"extra{n}") is None  # one at a time
        searcher.on_trial_complete(f"t{n}", result(0.1 * n, 4))
    # Alternating cells, never more than one trial apart.
    assert issued == [CELLS[0].name, CELLS[1].name] * 3
    assert searcher.suggest("t6") == Searcher.FINISHED
    for study in searcher.studies.values():
        assert len(study.trials) == 3
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_concurrency_is_counted_by_the_searcher():
    searcher = make_searcher(concurrent=2)
    assert searcher.set_max_concurrency(2) is True
    assert searcher.suggest("a") and searcher.suggest("b")
    assert searcher.suggest("c") is None
    searcher.on_trial_complete("a", result(0.5, 4))
    assert searcher.suggest("c") is not None


def test_finished_only_after_every_trial_is_told():
    searcher = make_searcher(trials=1, concurrent=4)
    searcher.suggest("a")
    searcher.suggest("b")
    assert searcher.suggest("c") is None  # budget issued, but two trials still running
    searcher.on_trial_complete("a", result(0.5, 4))
    assert searcher.suggest("c") is None
    searcher.on_trial_complete("b", result(0.4, 4))
    assert searcher.suggest("c") == Searcher.FINISHED


def test_stopped_trials_are_pruned_and_errors_fail():
    searcher = make_searcher(trials=3, concurrent=3, max_epochs=4)
    searcher.suggest("full")
    searcher.suggest("other-cell")
    searcher.suggest("stopped")
    searcher.on_trial_result("full", result(0.3, 1))
    searcher.on_trial_complete("full", result(0.6, 4))
    searcher.on_trial_result("stopped", result(0.1, 1))
    # ASHA stopped it at epoch 2; that result never reached on_trial_result.
    searcher.on_trial_complete("stopped", result(0.15, 2))
    searcher.on_trial_complete("other-cell", error=True)
    convnova = searcher.studies[CELLS[0].name].trials
    states = {t.number: t.state for t in convnova}
    assert states == {0: optuna.trial.TrialState.COMPLETE, 1: optuna.trial.TrialState.PRUNED}
    assert convnova[0].value == pytest.approx(0.6)
    assert convnova[1].intermediate_values == {1: 0.1, 2: 0.15}
    (failed,) = searcher.studies[CELLS[1].name].trials
    assert failed.state == optuna.trial.TrialState.FAIL


def test_model_failures_count_and_infrastructure_failures_are_issued_again_up_to_a_cap():
    from ablate.tune_plugins import MAX_REISSUES_PER_SLOT

    searcher = make_searcher(trials=2, concurrent=1)
    searcher.suggest("diverged")
    searcher.on_trial_result("diverged", result(0.2, 1))
    # The model failed: its last result repeats its best score so far, which is no value.
    searcher.on_trial_complete("diverged", {**result(0.2, 2), MetricName.MODEL_FAILURE: 1,
                                            "failure": "nan_loss"})
    (diverged,) = searcher.studies[CELLS[0].name].trials
    assert diverged.state == optuna.trial.TrialState.FAIL
    assert diverged.user_attrs["model_failure"] == "nan_loss"
    assert diverged.intermediate_values == {1: 0.2}
    assert searcher.issued[CELLS[0].name] == 1  # it counts: the cell has one trial left
    # A trial that errored (Tune's retries spent) frees its slot, with its seed, a few times.
    crashes = []
    while True:
        config = searcher.suggest(f"crash{len(crashes)}")
        if config["cell"] != CELLS[1].name:
            searcher.on_trial_complete(f"crash{len(crashes)}", result(0.5, 4))
            continue
        if len(crashes) > MAX_REISSUES_PER_SLOT:
            break
        crashes.append(config)
        searcher.on_trial_complete(f"crash{len(crashes) - 1}", error=True)
    assert len(crashes) == MAX_REISSUES_PER_SLOT + 1
    assert {(c["slot"], c["seed"]) for c in crashes} == {(0, crashes[0]["seed"])}
    # Past the cap the slot stays failed (and counted): the cell's next trial is its last.
    assert config["slot"] == 1
    searcher.on_trial_complete(f"crash{len(crashes)}", result(0.5, 4))
    assert searcher.issued[CELLS[1].name] == 2
    assert searcher.suggest("more") == Searcher.FINISHED
    states = [(t.state, t.user_attrs.get("infrastructure")) for t in
              searcher.studies[CELLS[1].name].trials]
    assert states == [(optuna.trial.TrialState.FAIL, True)] * (MAX_REISSUES_PER_SLOT + 1) + [
        (optuna.trial.TrialState.COMPLETE, None)]


def test_same_seed_same_suggestions_in_every_cell():
    first, second = make_searcher(seed=7), make_searcher(seed=7)
    a = [first.suggest(f"x{i}")["hparams"] for i in range(2)]
    b = [second.suggest(f"x{i}")["hparams"] for i in range(2)]
    assert a == b
    # Both cells draw their first trial from the same seeded sampler and shared ranges.
    assert a[0]["learning_rate"] != make_searcher(seed=8).suggest("y")["hparams"][
        "learning_rate"]


def test_save_and_restore_keep_studies(tmp_path):
    searcher = make_searcher(trials=2)
    searcher.suggest("a")
    searcher.on_trial_complete("a", result(0.5, 4))
    searcher.save(str(tmp_path / "state.pkl"))
    restored = make_searcher(trials=2)
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.issued == searcher.issued
    assert len(restored.studies[CELLS[0].name].trials) == 1


def stub(trial_id, cell):
    trial = Trial("train_trial", config={"cell": cell}, stub=True, trial_id=trial_id)
    return trial


def test_asha_compares_trials_only_within_their_cell():
    strong, weak = CELLS[0].name, CELLS[1].name
    per_cell = CellScheduler([strong, weak], max_t=4, grace_period=1, rf=2)
    global_asha = AsyncHyperBandScheduler(metric=MetricName.BEST_DEV_SCORE, mode="max", max_t=4,
                                          grace_period=1, reduction_factor=2)
    strong_trials = [stub(f"s{i}", strong) for i in range(3)]
    weak_trial = stub("w0", weak)
    for scheduler in (per_cell, global_asha):
        for trial in [*strong_trials, weak_trial]:
            scheduler.on_trial_add(None, trial)
        for trial, value in zip(strong_trials, (0.9, 0.8, 0.85), strict=True):
            scheduler.on_trial_result(None, trial, result(value, 1))
    # One global ASHA stops the weak cell's only trial because the other cell is ahead ...
    assert global_asha.on_trial_result(None, weak_trial, result(0.2, 1)) == TrialScheduler.STOP
    # ... per-cell ASHA lets it go on: it is the best of its own cell.
    assert per_cell.on_trial_result(None, weak_trial, result(0.2, 1)) == TrialScheduler.CONTINUE
    # Within a cell, a poor trial is still stopped.
    poor = stub("s3", strong)
    per_cell.on_trial_add(None, poor)
    assert per_cell.on_trial_result(None, poor, result(0.1, 1)) == TrialScheduler.STOP


def test_asha_rungs_survive_a_restore_inside_the_searchers_state(tmp_path):
    """Tune restores a scheduler as it was built (empty rungs); the rungs come back through the
    searcher's saved state, so a trial after a resume meets the same cut-offs."""
    cell = CELLS[0].name
    searcher, scheduler = make_searcher(trials=4), CellScheduler(
        [cell, CELLS[1].name], max_t=4, grace_period=1, rf=2, state_key="exp")
    searcher.state_key = "exp"
    good = [stub(f"g{i}", cell) for i in range(3)]
    for trial, value in zip(good, (0.7, 0.8, 0.9), strict=True):
        scheduler.on_trial_add(None, trial)
        assert scheduler.on_trial_result(None, trial, result(value, 1)) == TrialScheduler.CONTINUE
    searcher.save(str(tmp_path / "state.pkl"))

    # What Tuner.restore hands over: the scheduler as built, and the searcher from its file.
    fresh = CellScheduler([cell, CELLS[1].name], max_t=4, grace_period=1, rf=2, state_key="exp")
    restored = make_searcher(trials=4)
    restored.restore(str(tmp_path / "state.pkl"))
    poor = stub("p", cell)
    fresh.on_trial_add(None, poor)
    assert fresh.on_trial_result(None, poor, result(0.1, 1)) == TrialScheduler.STOP
    # Without the saved rungs the same trial would have gone on.
    built = CellScheduler([cell, CELLS[1].name], max_t=4, grace_period=1, rf=2, state_key="b")
    built.on_trial_add(None, poor)
    assert built.on_trial_result(None, poor, result(0.1, 1)) == TrialScheduler.CONTINUE


def test_a_repeated_iteration_gets_the_answer_it_got_before():
    """A trial restored from a checkpoint older than its last report repeats iterations: ASHA
    would now find its own earlier value in the rung and let it on; the recorded answer wins."""
    cell = CELLS[0].name
    scheduler = CellScheduler([cell], max_t=4, grace_period=1, rf=2)
    for i, value in enumerate((0.8, 0.9)):
        trial = stub(f"g{i}", cell)
        scheduler.on_trial_add(None, trial)
        scheduler.on_trial_result(None, trial, result(value, 1))
    poor = stub("p", cell)
    scheduler.on_trial_add(None, poor)
    assert scheduler.on_trial_result(None, poor, result(0.1, 1)) == TrialScheduler.STOP
    assert scheduler.on_trial_result(None, poor, result(0.1, 1)) == TrialScheduler.STOP
    bare = scheduler.per_cell[cell]
    assert bare.on_trial_result(None, poor, result(0.1, 1)) == TrialScheduler.CONTINUE


def test_patience_ends_a_trial_as_complete_not_pruned():
    searcher = make_searcher(trials=1, concurrent=2, max_epochs=6)
    searcher.suggest("patient")
    searcher.on_trial_complete("patient", {**result(0.4, 3), "finished": 1})
    (trial,) = searcher.studies[CELLS[0].name].trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == pytest.approx(0.4)


def stub_with(trial_id, config, status="PENDING", last_result=None):
    trial = Trial("train_trial", config=config, stub=True, trial_id=trial_id)
    trial.status = status
    trial.run_metadata.last_result = last_result or {}
    return trial


def test_reconcile_after_resume_marks_lost_adopts_unknown_and_tells_finished(tmp_path):
    searcher = make_searcher(trials=2, concurrent=4)
    searcher.suggest("a")  # cell 0
    first = searcher.suggest("b")  # cell 1
    lost = searcher.suggest("c")  # cell 0
    searcher.save(str(tmp_path / "state.pkl"))

    restored = make_searcher(trials=2, concurrent=4)
    restored.restore(str(tmp_path / "state.pkl"))
    # Tune restored: "a" finished (the searcher never heard), "b" still running, "c" lost,
    # and "d" started after the searcher's last save.
    TRIALS_SEEN["a"] = stub_with("a", {"cell": CELLS[0].name}, "TERMINATED", result(0.5, 4))
    TRIALS_SEEN["b"] = stub_with("b", first, "RUNNING")
    d_config = TrialConfig(cell=CELLS[1].name, hparams=first["hparams"], seed=1).to_tune()
    TRIALS_SEEN["d"] = stub_with("d", d_config, "RUNNING")
    config = restored.suggest("e")
    assert config["cell"] == CELLS[0].name  # c's slot re-issued, with c's seed
    assert (config["slot"], config["seed"]) == (lost["slot"], lost["seed"])
    assert set(restored.live) == {"b", "d", "e"}
    assert restored.issued == {CELLS[0].name: 2, CELLS[1].name: 2}
    states = [(t.state, t.user_attrs.get("lost")) for t in
              restored.studies[CELLS[0].name].trials]
    assert (optuna.trial.TrialState.COMPLETE, None) in states
    assert (optuna.trial.TrialState.FAIL, True) in states
    adopted = restored.studies[CELLS[1].name].trials[-1]
    assert adopted.params == first["hparams"]


def test_the_cached_tpe_suggests_exactly_what_optunas_own_does():
    """ablate's TPE keeps each finished trial's converted parameters; its suggestions must be
    Optuna's TPESampler's, trial for trial, with completed, pruned and failed trials mixed."""
    import warnings

    from ablate.tune_plugins import sample_params, tpe_sampler

    space = load_search_space(DEFAULT_SEARCH_SPACE_DIR, "transformer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        plain = optuna.samplers.TPESampler(seed=5, n_startup_trials=4, multivariate=True)
    runs = []
    for sampler in (tpe_sampler(5, 4), plain):
        study = optuna.create_study(direction="maximize", sampler=sampler)
        drawn = []
        for i in range(40):
            trial = study.ask()
            params = sample_params(trial, space.params)
            drawn.append(params)
            if i % 7 == 3:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            elif i % 5 == 2:
                trial.report(params["learning_rate"], step=1)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, params["learning_rate"] * 100 - params["dropout"])
        runs.append(drawn)
    assert runs[0] == runs[1]


def test_snapshot_period_is_every_second_for_small_sweeps_and_tunes_auto_past_that():
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    from ablate.study import SNAPSHOT_EVERY_SECOND_UP_TO, snapshot_period

    for trials, auto in ((1, False), (SNAPSHOT_EVERY_SECOND_UP_TO, False),
                         (SNAPSHOT_EVERY_SECOND_UP_TO + 1, True), (10_000, True)):
        period = snapshot_period(trials)
        # The value means to this Ray what the rule says: a fixed second, or Tune's adaptive one.
        manager = _ExperimentCheckpointManager(storage=None, checkpoint_period=period)
        assert manager.auto_checkpoint_enabled is auto, trials
        if not auto:
            assert manager._checkpoint_period == 1.0


def test_a_period_the_user_set_wins_over_the_rule(monkeypatch):
    import ablate.study as study

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")
    monkeypatch.setattr(study, "_USER_SNAPSHOT_PERIOD", None)
    study.set_snapshot_period(10_000)  # a large sweep after a small one in the same process
    assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "auto"
    monkeypatch.setattr(study, "_USER_SNAPSHOT_PERIOD", "7")
    study.set_snapshot_period(10_000)
    assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "7"
