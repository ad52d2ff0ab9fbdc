"""The live view: while a study runs its report is logged, and kept current, as artifacts of
the sweep's run, the parent of its cell runs; the final refresh replaces the live ones."""

from __future__ import annotations

import threading
import time

import pytest
from mlflow import MlflowClient

from ablate.live_report import ARTIFACT_PATH, LiveReport
from ablate.tracking.schema import Stage, Tag, tag_filter
from tests.test_e2e import ablate, write_spec


class CountingReport(LiveReport):
    """A live report whose refresh only records when it ran (the throttle is under test)."""

    def __init__(self, interval: float) -> None:
        super().__init__(key="unit", tracking_uri="sqlite://", study="s", sweep="w", run_id="r",
                         out_dir=".", report_kwargs={}, interval=interval,
                         progress=lambda _: None)
        self.times: list[float] = []
        self.ran = threading.Event()

    def refresh(self) -> bool:
        self._last_start = time.monotonic()
        self.times.append(self._last_start)
        self.ran.set()
        return True


def test_pokes_within_the_interval_give_one_refresh_and_close_gives_the_final_one():
    live = CountingReport(interval=3.0).start()
    try:
        for _ in range(20):  # trials ending in a burst
            live.poke()
        assert live.ran.wait(timeout=10)
        time.sleep(0.5)
        for _ in range(20):
            live.poke()  # within the interval: waits for it
        time.sleep(0.5)
        assert len(live.times) == 1
    finally:
        live._stop.set()
    live._thread.join(timeout=10)
    assert len(live.times) == 1  # stopped before the interval ran out: no second refresh


@pytest.mark.integration
def test_a_running_study_keeps_its_report_in_mlflow(tmp_path):
    spec = write_spec(
        tmp_path,
        name="live",
        data={"synthetic": {"scale": 0.1, "seed": 3}, "tasks": ["prom/prom_core_tata"]},
        axes={"architecture": ["cnn"], "pretraining": ["none"], "tokenizer": ["char", "kmer:3"]},
        budget={"trials_per_cell": 3, "max_epochs": 2, "concurrent_trials": 2},
        replicates=[0],
        tracking={"uri": f"sqlite:///{tmp_path / 'mlruns.db'}", "live_report_seconds": 1},
    )
    done = ablate("run", str(spec), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "live report: refreshed at most every 1 s" in done.stdout

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("live").experiment_id
    [sweep_run] = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.SWEEP))
    cells = client.search_runs([experiment], tag_filter(Tag.STAGE, Stage.CELL))
    assert len(cells) == 2
    assert {c.data.tags.get(Tag.PARENT_RUN) for c in cells} == {sweep_run.info.run_id}

    names = {a.path for a in client.list_artifacts(sweep_run.info.run_id, ARTIFACT_PATH)}
    for name in ("report.html", "report.md", "comparisons.csv"):
        assert f"{ARTIFACT_PATH}/{name}" in names, names
    # Refreshed while it ran (after the first trials, and as later ones ended), then once more.
    metrics = client.get_run(sweep_run.info.run_id).data.metrics
    assert metrics["live_report_refreshes"] >= 2, metrics
    assert metrics["live_report_failures"] == 0, metrics
    # The one in MLflow is the final report: every cell's budget done, no unfinished notice.
    local = client.download_artifacts(sweep_run.info.run_id, f"{ARTIFACT_PATH}/report.md",
                                      str(tmp_path / "downloaded"))
    text = open(local, encoding="utf-8").read()
    assert "## Answers" in text
    assert "This sweep is unfinished" not in text
