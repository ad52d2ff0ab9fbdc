"""Ray Tune plug-ins that search every cell alike: one Optuna study per cell, ASHA per cell.

``CellSearcher`` (a Ray Tune ``Searcher``) keeps one seeded Optuna study per cell and hands out
trials so that cells stay level; ``CellScheduler`` runs one ASHA instance per cell, so early
stopping only ever compares trials of the same cell; ``FixedConfigs`` hands out a fixed list
(the replicates); ``TrialProgress`` prints a line per finished trial.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

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
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup,
                                          multivariate=True)


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
    ) -> None:
        super().__init__(metric=METRIC, mode=MODE)
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
        study = self.studies[issued.cell]
        if error:
            issued.trial.set_user_attr("infrastructure", True)
            study.tell(issued.trial, state=optuna.trial.TrialState.FAIL)
            self._reissue(issued)
            return
        failure = model_failure(result)
        if failure is not None:
            # Told as FAIL, not as its best dev score so far: the score was reached before the
            # model diverged (or never, out of memory), and as a value it would rank an
            # unstable configuration as if it had trained. Optuna's samplers leave FAIL trials
            # out of their model; the trial still counts toward the cell's budget.
            issued.trial.set_user_attr("model_failure", failure)
            study.tell(issued.trial, state=optuna.trial.TrialState.FAIL)
            return
        if not result or self.metric not in result:
            study.tell(issued.trial, state=optuna.trial.TrialState.FAIL)
            return
        # The result that made ASHA stop a trial never reached on_trial_result: record it here.
        self._report(issued, result)
        if not ran_to_end(result, self.max_epochs[issued.cell]):
            study.tell(issued.trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(issued.trial, float(result[self.metric]))

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
        seen = dict(TRIALS_SEEN)
        for trial_id in list(self.live):
            if trial_id not in seen:
                issued = self.live.pop(trial_id)
                issued.trial.set_user_attr("lost", True)
                self.studies[issued.cell].tell(issued.trial, state=optuna.trial.TrialState.FAIL)
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

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._reconciled = False


class CellScheduler(FIFOScheduler):
    """One ASHA instance per cell: a trial is only ever compared with trials of its own cell.

    It also records every trial Tune adds (restored ones included) in ``TRIALS_SEEN``, which
    the searcher reconciles its state with after a resume.
    """

    def __init__(self, cell_names: list[str], *, max_t: int | dict[str, int], grace_period: int,
                 rf: float):
        super().__init__()
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

    def _asha_of(self, trial: Any) -> AsyncHyperBandScheduler:
        """The ASHA instance of the trial's cell."""
        return self.per_cell[cell_of(trial.config)]

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        TRIALS_SEEN[trial.trial_id] = trial
        if trial.status in ("TERMINATED", "ERROR"):  # restored, already finished
            return
        self._asha_of(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        scheduler = self._asha_of(trial)
        # A model failure's result is its last; its best score so far is no rung value.
        if trial.trial_id not in scheduler._trial_info or model_failure(result):
            return TrialScheduler.CONTINUE
        return scheduler.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
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
    """Prints one line per finished trial: how far the study is, and how the trial did.

    A trial that errored (an infrastructure failure, its retries spent) does not advance the
    count: a search issues its slot again."""

    def __init__(self, total: int, max_epochs: int | dict[str, int],
                 print_fn: Callable[[str], None] = print):
        self.total = total
        self.max_epochs = max_epochs
        self.print_fn = print_fn
        self.done = 0

    def _line(self, trial: Any, outcome: str, counted: bool = True) -> None:
        self.done += int(counted)
        result = trial.last_result or {}
        score = result.get(METRIC)
        score_text = f"{score:.4f}" if isinstance(score, float) else "-"
        cell = cell_of(trial.config) or "?"
        self.print_fn(
            f"[{self.done}/{self.total}] {cell} "
            f"trial {trial.trial_id}: {outcome} after {epochs_done(result)}/"
            f"{self._epochs(cell)} epochs, {METRIC} {score_text}"
        )

    def _epochs(self, cell: str) -> int:
        if isinstance(self.max_epochs, dict):
            return int(self.max_epochs.get(cell, max(self.max_epochs.values(), default=0)))
        return int(self.max_epochs)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        cell = cell_of(trial.config) or "?"
        failure = model_failure(trial.last_result)
        if failure is not None:
            self._line(trial, f"model failed ({failure})")
            return
        done = ran_to_end(trial.last_result or {}, self._epochs(cell))
        self._line(trial, "completed" if done else "stopped early")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, f"FAILED, infrastructure ({trial.error_file or 'see Ray logs'})",
                   counted=False)


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

