"""Read a study back from MLflow as DataFrames, and the comparisons built on them.

For notebook users, each function returns a DataFrame (the report is built from the same ones):
``runs(tracking_uri, study)`` every run of the latest sweep; ``search_trials(runs)`` its search
trials; ``cells(trials, runs)`` the budget table, one row per cell; ``replicates(runs)`` one row
per test run; ``comparisons(replicates)`` paired tests along each axis, Holm-adjusted;
``contrasts(replicates, cells, patterns)`` paired tests between cell patterns that may vary
several axes at once (both with "underpowered" verdicts where the tasks are too few);
``cost_benefit(runs, pretrain_costs(...), prices=...)`` test score against money and FLOPs,
CPU core-hours and GPU-hours kept apart, with each amortisation rule; ``break_even`` in money
and FLOPs; ``tuning_curves``, ``compute_curves`` and ``equal_compute`` (each cell's best at
equal search FLOPs); ``kmer_floor``, ``caveats``, ``leakage(pretraining_runs(...))`` and
``edge_flags`` for what the report discloses beside the numbers. Column names follow
``ablate.tracking.schema``.

Every score is the task's own metric (MCC, or macro F1 for virus/covid; the ``metric`` column
says which). Runs written before the schema carried the score names (version 2 and older) are
read with MCC as their score.
"""

from ablate.analysis.columns import *  # noqa: F403
from ablate.analysis.columns import _column as _column
from ablate.analysis.comparisons import *  # noqa: F403
from ablate.analysis.costs import *  # noqa: F403
from ablate.analysis.curves import *  # noqa: F403
from ablate.analysis.tables import *  # noqa: F403
from ablate.tracking.reader import latest_sweep as latest_sweep  # re-exported for notebooks
from ablate.tracking.reader import runs as runs  # re-exported for notebooks
