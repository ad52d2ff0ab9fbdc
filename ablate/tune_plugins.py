"""Ray Tune plug-ins that search every cell alike: one Optuna study per cell, ASHA per cell.

``CellSearcher`` (a Ray Tune ``Searcher``) keeps one seeded Optuna study per cell and hands out
trials so that cells stay level; ``CellScheduler`` runs one ASHA instance per cell, so early
stopping only ever compares trials of the same cell; ``FixedConfigs`` hands out a fixed list
(the replicates); ``TrialProgress`` reports each trial to the console (``ablate.console``).

Tune saves a searcher's state with the experiment but never a scheduler's: a restored Tuner
gets the scheduler as it was built, with empty rungs, and would stop trials after a resume by
other cut-offs than before it. So the scheduler's state (every cell's ASHA rungs and each
decision it made) is saved inside the searcher's, and handed back to the scheduler when the
searcher is restored: searcher and scheduler of one experiment share a ``state_key``.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from ablate.optuna_mirror import TUNE_TRIAL_ID, StudyMirror
from ablate.spec import Cell, ParamSpec, SearchSpace
from ablate.tracking.schema import RESULT_TAGS, MetricName, Tag
from ablate.trial import TrialConfig, cell_of, epochs_done, ran_to_end, search_seed

# The task's own metric (MCC, or macro F1 for virus/covid), best so far on dev.
METRIC = MetricName.BEST_DEV_SCORE
MODE = "max"
# Trial id -> Tune trial, for every trial Tune added in this driver process (restored ones
# included). Written by CellScheduler, read by CellSearcher. A module-level table rather than a
# reference between the two, because Tune pickles and restores each of them separately.
TRIALS_SEEN: dict[str, Any] = {}
# How many times one slot of a cell is issued again after infrastructure failures, at most: a
# crash that repeats whatever the trial (a broken node image, say) must not loop forever.
MAX_REISSUES_PER_SLOT = 2
# state_key -> the CellScheduler that last received a Tune event in this driver process, and
# state_key -> scheduler state restored with a searcher, not yet taken by its scheduler.
# Module-level for the same reason as TRIALS_SEEN.
LIVE_SCHEDULERS: dict[str, Any] = {}
RESTORED_SCHEDULER_STATE: dict[str, dict] = {}
_FAILURE_FIELD = {tag: field for field, tag in RESULT_TAGS.items()}[Tag.FAILURE]


def model_failure(result: dict | None) -> str | None:
    """The ``FailureKind`` of a result that reports its model failed, else None."""
    if not result or not result.get(MetricName.MODEL_FAILURE):
        return None
    return str(result.get(_FAILURE_FIELD, "unknown"))


def sample_params(trial: optuna.Trial, params: dict[str, ParamSpec]) -> dict[str, Any]:
    """Draw one value per nuisance hyperparameter from an Optuna trial (define-by-run)."""
    values: dict[str, Any] = {}
    for name, p in params.items():
        if p.type == "float":
            values[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        elif p.type == "int":
            values[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
        else:
            values[name] = trial.suggest_categorical(name, p.choices)
    return values


def tpe_sampler(seed: int, n_startup: int) -> optuna.samplers.TPESampler:
    """Multivariate TPE: one joint density model over all of a cell's hyperparameters.

    Optuna reports it outperforms independent TPE (it models interactions such as learning
    rate with batch size), and it fits its model once per trial rather than once per parameter:
    measured here, an ask costs 4.9 ms instead of 10.2 ms at 400-500 earlier trials.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True)


class _TPESampler(optuna.samplers.TPESampler):
    """Optuna's ``TPESampler``, unchanged in what it suggests, that converts each finished
    trial's parameters to TPE's internal representation once rather than on every ask.

    TPE builds its two density models from every earlier trial of the study on each ask, and
    Optuna reads each trial's parameters and converts them (``to_internal_repr``) in a Python
    loop every time: measured, the largest share of an ask that grows with a cell's history.
    A finished trial's parameters never change, so its converted row is kept, per search space
    (the parameter names, in order) and trial number. The arrays handed to the density models
    are the same values in the same order and dtype, so every suggestion is the same as
    ``TPESampler``'s for the same seed and history. (A parameter's internal value depends on
    its name's distribution only through a categorical's choices, which Optuna requires to be
    the same for one name throughout a study.) The rows are not pickled with the sampler.
    """

    def _get_internal_repr(self, trials: list[optuna.trial.FrozenTrial],
                           search_space: dict[str, Any], study: optuna.Study
                           ) -> dict[str, np.ndarray]:
        names = tuple(search_space)
        cache = self.__dict__.setdefault("_internal_rows", {}).setdefault(names, {})
        rows = []
        for trial in trials:
            row = cache.get(trial.number) if trial.state.is_finished() else None
            if row is None:
                params = self._get_params(trial, study)
                row = (tuple(search_space[name].to_internal_repr(params[name])
                             for name in names)
                       if search_space.keys() <= params.keys() else ())
                if trial.state.is_finished():
                    cache[trial.number] = row
            if row:
                rows.append(row)
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
        return {name: np.asarray(column) for name, column in zip(names, columns, strict=True)}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_internal_rows", None)
        return state


class _PickledState(Searcher):
    """Save and restore a searcher as a pickle of its attributes (Tune calls these)."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))


@dataclass
class _Issued:
    cell: str
    trial: optuna.trial.Trial
    slot: int
    last_step: int = 0


def per_cell(value: int | dict[str, int], cell_names: list[str]) -> dict[str, int]:
    """An epoch budget for every cell: one value for all, or a cell -> value table."""
    if isinstance(value, dict):
        return {name: int(value[name]) for name in cell_names}
    return {name: int(value) for name in cell_names}


class CellSearcher(_PickledState):
    """Hands out trials from one Optuna study per cell, keeping every cell's budget equal.

    Each cell's study uses a TPE sampler with the same seed and the same ranges, so cells differ
    only in their scientific axes. ``suggest`` picks the cell with the fewest issued trials, so
    cells advance level; it returns ``None`` while ``max_concurrent`` trials are running and
    ``Searcher.FINISHED`` once every cell has issued its budget and every trial has been told to
    its study. Trials that ASHA stopped early are told to Optuna as PRUNED (with their last
    value as an intermediate value), not as COMPLETE, so truncated scores never mislead TPE.

    Failures are of two kinds. A trial whose *model* failed (its last result carries
    ``model_failure``: a NaN loss, out of memory at its own batch) counts toward its cell's
    budget like any other trial and is told as FAIL: it is the arm's failure, never re-rolled.
    A trial that errored (Tune's retries spent: a lost node, a crash outside the model) is the
    infrastructure's: told as FAIL (user attribute ``infrastructure``), it leaves the budget and
    its slot is issued again, at most ``MAX_REISSUES_PER_SLOT`` times per slot, after which the
    slot stays failed (and the cell's achieved budget shows it).

    The n-th trial of every cell fills slot n and trains with seed ``search_seed(seed, n)``;
    a trial lost when a driver stopped, or failed by the infrastructure, frees its slot, which
    the next trial of that cell takes with the same seed. ``max_epochs`` is one budget for all
    cells or a cell -> epochs table.

    With a ``mirror`` (``ablate.optuna_mirror.StudyMirror``) every trial told to a cell's study
    is also copied to an RDB storage (for optuna-dashboard) once ``save`` has saved it, written
    behind by the mirror's own thread; the in-memory studies stay the searcher's state. Each
    trial carries its Tune trial id as the user attribute ``tune_trial_id``.
    """

    def __init__(
        self,
        cells: list[Cell],
        spaces: dict[str, SearchSpace],
        *,
        trials_per_cell: int,
        max_epochs: int | dict[str, int],
        max_concurrent: int,
        seed: int,
        startup_trials: int | None = None,
        state_key: str = "",
        mirror: StudyMirror | None = None,
    ) -> None:
        super().__init__(metric=METRIC, mode=MODE)
        self.state_key = state_key  # shared with this experiment's CellScheduler
        self.mirror = mirror  # pickled as its configuration only
        self.cell_names = [c.name for c in cells]
        self.cell_arch = {c.name: c.architecture for c in cells}
        self.spaces = spaces
        self.trials_per_cell = trials_per_cell
        self.max_epochs = per_cell(max_epochs, self.cell_names)
        self.max_concurrent = max_concurrent
        self.seed = seed
        n_startup = startup_trials or max(1, math.ceil(trials_per_cell / 2))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.studies = {
            name: optuna.create_study(
                study_name=name, direction="maximize", sampler=tpe_sampler(seed, n_startup)
            )
            for name in self.cell_names
        }
        self.issued = {name: 0 for name in self.cell_names}
        self.next_slot = {name: 0 for name in self.cell_names}
        self.free_slots: dict[str, list[int]] = {name: [] for name in self.cell_names}
        self.live: dict[str, _Issued] = {}
        self.known: set[str] = set()  # every Tune trial id this searcher has accounted for
        self.reissues: dict[str, dict[int, int]] = {name: {} for name in self.cell_names}
        self._reconciled = False

    # --- Tune's interface -------------------------------------------------------------------

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        # Concurrency is counted here; returning True turns Tune's limiter into a pass-through.
        self.max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self._reconciled:
            self._reconcile()
        if len(self.live) >= self.max_concurrent:
            return None
        open_cells = [c for c in self.cell_names if self.issued[c] < self.trials_per_cell]
        if not open_cells:
            return Searcher.FINISHED if not self.live else None
        cell = min(open_cells, key=lambda c: self.issued[c])  # stable: ties keep cell order
        trial = self.studies[cell].ask()
        trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
        space = self.spaces[self.cell_arch[cell]]
        hparams = sample_params(trial, space.params)
        model_params = sample_params(trial, space.model_params)
        slot = self._take_slot(cell)
        self.issued[cell] += 1
        self.live[trial_id] = _Issued(cell, trial, slot)
        self.known.add(trial_id)
        # Pairing: slot n of every cell trains with the same seed.
        return TrialConfig(cell=cell, hparams=hparams, seed=search_seed(self.seed, slot),
                           optuna_trial=trial.number, model_params=model_params,
                           slot=slot).to_tune()

    def _take_slot(self, cell: str) -> int:
        free = self.free_slots[cell]
        if free:
            free.sort()
            return free.pop(0)
        self.next_slot[cell] += 1
        return self.next_slot[cell] - 1

    def _hold_slot(self, cell: str, slot: int) -> None:
        """Mark ``slot`` as used (a trial Tune holds that the searcher adopts)."""
        if slot in self.free_slots[cell]:
            self.free_slots[cell].remove(slot)
        self.next_slot[cell] = max(self.next_slot[cell], slot + 1)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        issued = self.live.get(trial_id)
        # A model failure's result repeats the best score so far: not a new intermediate value.
        if issued is not None and self.metric in result and not model_failure(result):
            self._report(issued, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        issued = self.live.pop(trial_id, None)
        if issued is None:
            return
        if error:
            issued.trial.set_user_attr("infrastructure", True)
            self._tell(issued, state=optuna.trial.TrialState.FAIL)
            self._reissue(issued)
            return
        failure = model_failure(result)
        if failure is not None:
            # Told as FAIL, not as its best dev score so far: the score was reached before the
            # model diverged (or never, out of memory), and as a value it would rank an
            # unstable configuration as if it had trained. Optuna's samplers leave FAIL trials
            # out of their model; the trial still counts toward the cell's budget.
            issued.trial.set_user_attr("model_failure", failure)
            self._tell(issued, state=optuna.trial.TrialState.FAIL)
            return
        if not result or self.metric not in result:
            self._tell(issued, state=optuna.trial.TrialState.FAIL)
            return
        # The result that made ASHA stop a trial never reached on_trial_result: record it here.
        self._report(issued, result)
        if not ran_to_end(result, self.max_epochs[issued.cell]):
            self._tell(issued, state=optuna.trial.TrialState.PRUNED)
        else:
            self._tell(issued, float(result[self.metric]))

    def _tell(self, issued: _Issued, value: float | None = None,
              state: optuna.trial.TrialState | None = None) -> None:
        """Tell a trial to its cell's study, and hand it to the mirror (no I/O here)."""
        told = self.studies[issued.cell].tell(issued.trial, value, state=state)
        mirror = self.__dict__.get("mirror")
        if mirror is not None:
            mirror.put(issued.cell, told)

    def _reissue(self, issued: _Issued) -> None:
        """Free an infrastructure-failed trial's slot for the next trial of its cell, unless
        the slot has been issued again ``MAX_REISSUES_PER_SLOT`` times already."""
        counts = self.__dict__.setdefault("reissues", {}).setdefault(issued.cell, {})
        if counts.get(issued.slot, 0) >= MAX_REISSUES_PER_SLOT:
            return
        counts[issued.slot] = counts.get(issued.slot, 0) + 1
        self.issued[issued.cell] -= 1
        self.free_slots[issued.cell].append(issued.slot)

    @staticmethod
    def _report(issued: _Issued, result: dict) -> None:
        step = epochs_done(result)
        if step > issued.last_step:
            issued.trial.report(float(result[METRIC]), step=step)
            issued.last_step = step

    # --- state and resume ----------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Make the searcher agree with the trials Tune holds, on its first call.

        After a resume the searcher's file and Tune's experiment state may come from different
        saves, and if Tune could not restore the searcher it hands over a fresh one:

        - a trial the searcher thinks is running but Tune does not hold was lost between the
          two saves: told to its study as FAIL (marked ``lost``) and its slot re-issued;
        - a trial Tune finished that the searcher still thinks is running is told now;
        - a trial Tune holds that the searcher never issued is adopted with its parameters.
        """
        self._reconciled = True
        mirror = self.__dict__.get("mirror")
        if mirror is not None:  # a restored searcher: what its earlier driver left uncopied
            mirror.put_all(self.studies)
        seen = dict(TRIALS_SEEN)
        for trial_id in list(self.live):
            if trial_id not in seen:
                issued = self.live.pop(trial_id)
                issued.trial.set_user_attr("lost", True)
                self._tell(issued, state=optuna.trial.TrialState.FAIL)
                self.issued[issued.cell] -= 1
                self.free_slots[issued.cell].append(issued.slot)
                self.known.discard(trial_id)
        for trial_id, trial in seen.items():
            done = trial.status in ("TERMINATED", "ERROR")
            if trial_id in self.live and done:
                self.on_trial_complete(trial_id, trial.last_result,
                                       error=trial.status == "ERROR")
            elif trial_id not in self.known and cell_of(trial.config) in self.studies:
                cell = cell_of(trial.config)
                study = self.studies[cell]
                config = TrialConfig.from_tune(trial.config)
                study.enqueue_trial({**config.hparams, **config.model_params})
                adopted = study.ask()
                adopted.set_user_attr(TUNE_TRIAL_ID, trial_id)
                space = self.spaces[self.cell_arch[cell]]
                sample_params(adopted, space.params)  # fixes them
                sample_params(adopted, space.model_params)
                slot = config.slot if config.slot is not None else self._take_slot(cell)
                self._hold_slot(cell, slot)
                self.live[trial_id] = _Issued(cell, adopted, slot)
                self.issued[cell] += 1
                self.known.add(trial_id)
                if done:
                    self.on_trial_complete(trial_id, trial.last_result,
                                           error=trial.status == "ERROR")

    def save(self, checkpoint_path: str) -> None:
        """The searcher's attributes and, under ``_scheduler``, its experiment's scheduler
        state (one pickle, saved by Tune with the experiment state)."""
        state = dict(self.__dict__)
        scheduler = LIVE_SCHEDULERS.get(self.__dict__.get("state_key", ""))
        if scheduler is not None:
            state["_scheduler"] = scheduler.state()
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(state, handle)
        mirror = self.__dict__.get("mirror")
        if mirror is not None:  # the trials told so far are saved: they may be copied now
            mirror.release()

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        scheduler_state = self.__dict__.pop("_scheduler", None)
        if scheduler_state is not None:
            RESTORED_SCHEDULER_STATE[self.__dict__.get("state_key", "")] = scheduler_state
        self._reconciled = False


class CellScheduler(FIFOScheduler):
    """One ASHA instance per cell: a trial is only ever compared with trials of its own cell.

    It also records every trial Tune adds (restored ones included) in ``TRIALS_SEEN``, which
    the searcher reconciles its state with after a resume.

    Its state (``state()``: the ASHA instances and ``decisions``) travels in the searcher's
    saved state (see the module docstring) and is taken back on the first event after a
    restore. ``decisions`` holds what it answered for each (trial, iteration): a trial that
    reports an iteration again (restored from a checkpoint older than its last report) gets
    the same answer, as if it had never been interrupted.
    """

    def __init__(self, cell_names: list[str], *, max_t: int | dict[str, int], grace_period: int,
                 rf: float, state_key: str = ""):
        super().__init__()
        self.state_key = state_key
        self.decisions: dict[tuple[str, int], str] = {}
        max_ts = per_cell(max_t, cell_names)
        self.per_cell = {
            name: AsyncHyperBandScheduler(
                time_attr="training_iteration",
                metric=METRIC,
                mode=MODE,
                max_t=max_ts[name],
                grace_period=grace_period,
                reduction_factor=rf,
            )
            for name in cell_names
        }

    def state(self) -> dict[str, Any]:
        """What a restored scheduler needs to decide as this one would."""
        return {"per_cell": self.per_cell, "decisions": self.decisions}

    def _live(self) -> None:
        """Register as the live scheduler of its experiment, taking back the state restored
        with the searcher, if any."""
        key = self.__dict__.get("state_key", "")
        LIVE_SCHEDULERS[key] = self
        restored = RESTORED_SCHEDULER_STATE.pop(key, None)
        if restored is not None:
            self.per_cell.update(restored["per_cell"])
            self.decisions = dict(restored["decisions"])

    def _asha_of(self, trial: Any) -> AsyncHyperBandScheduler:
        """The ASHA instance of the trial's cell."""
        return self.per_cell[cell_of(trial.config)]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._live()
        TRIALS_SEEN[trial.trial_id] = trial
        if trial.status in ("TERMINATED", "ERROR"):  # restored, already finished
            return
        scheduler = self._asha_of(trial)
        if trial.trial_id not in scheduler._trial_info:  # else restored with the rungs
            scheduler.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._live()
        scheduler = self._asha_of(trial)
        # A model failure's result is its last; its best score so far is no rung value.
        if trial.trial_id not in scheduler._trial_info or model_failure(result):
            return TrialScheduler.CONTINUE
        key = (trial.trial_id, int(result.get("training_iteration", 0)))
        if key not in self.decisions:
            self.decisions[key] = scheduler.on_trial_result(tune_controller, trial, result)
        return self.decisions[key]

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._live()
        scheduler = self._asha_of(trial)
        if trial.trial_id not in scheduler._trial_info:
            return
        if model_failure(result):
            scheduler.on_trial_remove(tune_controller, trial)
        else:
            scheduler.on_trial_complete(tune_controller, trial, result)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        scheduler = self._asha_of(trial)
        if trial.trial_id in scheduler._trial_info:
            scheduler.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        stopped = sum(s._num_stopped for s in self.per_cell.values())
        return f"ASHA per cell ({len(self.per_cell)} cells): {stopped} trials stopped early"


class TrialProgress(Callback):
    """Reports how far a Tune experiment of the study is, and how each trial did.

    With a console (``ablate.console.current()``, as in `ablate run`) every event goes to it:
    a trial started, ended (completed, stopped early, model failed, failed), each step of
    Tune's loop, the experiment's start and end; the console draws its table and says which
    trials get a line of their own. Without one, every finished trial gets a line.
    ``budgets`` is each cell's number of trials (default: ``total`` shared evenly by the cells
    of ``max_epochs``); ``stage`` names the experiment, ``score`` the result field shown per
    cell: the best of its completed trials, or with ``mean`` their mean (the replicates).

    A trial that errored (an infrastructure failure, its retries spent) does not advance the
    count: a search issues its slot again. After a resume, the trials the restored experiment
    had finished are counted on its first step."""

    def __init__(self, total: int, max_epochs: int | dict[str, int],
                 print_fn: Callable[[str], None] = print, *, stage: str = "search",
                 budgets: dict[str, int] | None = None, score: str = METRIC,
                 mean: bool = False):
        self.total = total
        self.max_epochs = max_epochs
        self.print_fn = print_fn
        self.stage = stage
        self.budgets = budgets
        self.score = score
        self.mean = mean
        self.done = 0
        self._caught_up = False

    def _console(self) -> Any:
        from ablate.console import current

        return current()

    def _budgets(self) -> dict[str, int]:
        budgets = self.__dict__.get("budgets")
        if budgets is not None:
            return dict(budgets)
        cells = list(self.max_epochs) if isinstance(self.max_epochs, dict) else []
        share = self.total // len(cells) if cells else 0
        return {cell: share for cell in cells}

    def setup(self, **info: Any) -> None:
        self._caught_up = False
        console = self._console()
        if console is not None:
            console.stage_started(self.__dict__.get("stage", "search"), self._budgets(),
                                  self.__dict__.get("score", METRIC),
                                  mean=self.__dict__.get("mean", False))

    def _kind(self, trial: Any) -> tuple[str, str]:
        """(the console's outcome kind, the words of the trial's line)."""
        from ablate import console

        cell = cell_of(trial.config) or "?"
        failure = model_failure(trial.last_result)
        if failure is not None:
            return console.MODEL_FAILED, f"model failed ({failure})"
        if ran_to_end(trial.last_result or {}, self._epochs(cell)):
            return console.COMPLETED, "completed"
        return console.STOPPED, "stopped early"

    def _score(self, trial: Any) -> float | None:
        score = (trial.last_result or {}).get(self.__dict__.get("score", METRIC))
        return float(score) if isinstance(score, (int, float)) else None

    def _line(self, trial: Any, outcome: str, kind: str, counted: bool = True) -> None:
        self.done += int(counted)
        result = trial.last_result or {}
        score = result.get(METRIC)
        score_text = f"{score:.4f}" if isinstance(score, float) else "-"
        cell = cell_of(trial.config) or "?"
        console = self._console()
        if console is not None:
            console.trial_ended(cell, trial.trial_id, kind, self._score(trial))
            if not console.shows_trial(kind):
                return
        self.print_fn(
            f"[{self.done}/{self.total}] {cell} "
            f"trial {trial.trial_id}: {outcome} after {epochs_done(result)}/"
            f"{self._epochs(cell)} epochs, {METRIC} {score_text}"
        )

    def _epochs(self, cell: str) -> int:
        if isinstance(self.max_epochs, dict):
            return int(self.max_epochs.get(cell, max(self.max_epochs.values(), default=0)))
        return int(self.max_epochs)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.__dict__.get("_caught_up", True):
            return
        self._caught_up = True
        # A restored experiment's finished trials: counted, never reported again.
        from ablate import console

        finished = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        self.done = 0
        board = self._console()
        for trial in finished:
            kind = console.FAILED if trial.status == "ERROR" else self._kind(trial)[0]
            self.done += int(kind != console.FAILED)
            if board is not None:
                board.trial_ended(cell_of(trial.config) or "?", trial.trial_id, kind,
                                  self._score(trial))

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        console = self._console()
        if console is not None:
            console.tick()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        console = self._console()
        if console is not None:
            console.trial_started(cell_of(trial.config) or "?", trial.trial_id)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        console = self._console()
        if console is not None:
            console.trial_paused(cell_of(trial.config) or "?", trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        kind, outcome = self._kind(trial)
        self._line(trial, outcome, kind)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from ablate import console

        self._line(trial, f"FAILED, infrastructure ({trial.error_file or 'see Ray logs'})",
                   console.FAILED, counted=False)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        console = self._console()
        if console is not None:
            console.stage_ended()


class FixedConfigs(_PickledState):
    """Hands out a fixed list of configurations, in order, then finishes."""

    def __init__(self, configs: list[dict]):
        super().__init__(metric=METRIC, mode=MODE)
        self.configs = list(configs)
        self.issued = 0

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.issued >= len(self.configs):
            return Searcher.FINISHED
        self.issued += 1
        return self.configs[self.issued - 1]

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        pass

