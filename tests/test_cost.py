"""Cost in one unit: peaks and prices matched to device names, MFU, energy, and the analysis of
cost (per kind, money, FLOPs, compute curves, equal compute) on run tables shaped like MLflow's
search_runs output."""

import math

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

from ablate import analysis, cost, plots
from ablate.tracking.schema import (
    PRETRAIN_EXPERIMENT,
    MetricName,
    Outcome,
    Stage,
    Tag,
    metric_column,
    tag_column,
)

# A device name as torch.cuda.get_device_name gives it, for every part, and its figure.
DEVICE_NAMES = {
    "NVIDIA H100 80GB HBM3": ("H100", 989.4e12),
    "NVIDIA H100 PCIe": ("H100 PCIe", 756e12),
    "NVIDIA H100 NVL": ("H100 NVL", 835.5e12),
    "NVIDIA H200": ("H200", 989.4e12),
    "NVIDIA H200 NVL": ("H200 NVL", 835.5e12),
    "NVIDIA GH200 480GB": ("GH200", 989.4e12),
    "NVIDIA B200": ("B200", 2250e12),
    "NVIDIA A100-SXM4-80GB": ("A100", 312e12),
    "NVIDIA A100-PCIE-40GB": ("A100", 312e12),
    "NVIDIA L40S": ("L40S", 362.05e12),
    "NVIDIA L40": ("L40", 181.05e12),
    "NVIDIA L4": ("L4", 121e12),
    "NVIDIA A10G": ("A10G", 70e12),
    "NVIDIA A10": ("A10", 125e12),
    "NVIDIA A40": ("A40", 149.7e12),
    "NVIDIA RTX A6000": ("RTX A6000", 154.8e12),
    "NVIDIA A30": ("A30", 165e12),
    "NVIDIA GeForce RTX 4090": ("RTX 4090", 165.2e12),
    "Tesla V100-SXM2-16GB": ("V100", 125e12),
    "Tesla V100-PCIE-32GB": ("V100 PCIe", 112e12),
    "Tesla V100S-PCIE-32GB": ("V100S", 130e12),
    "Tesla T4": ("T4", 65e12),
}


@pytest.mark.parametrize("name", DEVICE_NAMES)
def test_every_device_name_gets_its_own_peak(name):
    key, figure = DEVICE_NAMES[name]
    assert cost.match_device(cost.GPU_PEAK_FLOPS, name) == key
    peak, source = cost.gpu_peak(name)
    assert peak == figure and source == cost.GPU_PEAK_FLOPS[key].source
    assert source.startswith(("datasheet:", "vendor figure:")) and "dense" in source
    assert cost.gpu_peak(name.lower()) == (peak, source)  # case does not matter


def test_every_peak_entry_is_reached_and_unknown_gpus_have_none():
    assert {key for key, _ in DEVICE_NAMES.values()} == set(cost.GPU_PEAK_FLOPS)
    peak, source = cost.gpu_peak("NVIDIA GB200")  # not in the table: not B200's figure
    assert math.isnan(peak) and "unknown GPU 'NVIDIA GB200'" in source
    assert cost.gpu_peak("NVIDIA H100 PCIe")[1] == "datasheet:NVIDIA H100 PCIe, dense bf16"


def test_prices_are_matched_like_peaks():
    name = "NVIDIA A100-SXM4-80GB"
    assert cost.price_for({"A100": 2.5}, "gpu", name) == (2.5, "A100")
    assert cost.price_for({"a100": 2.5}, "gpu", name) == (2.5, "a100")
    # The most specific key wins, whatever the table's order; the kind comes last.
    table = {"gpu": 1.0, "A100": 2.5, "A100 80GB": 3.0}
    assert cost.price_for(table, "gpu", name) == (3.0, "A100 80GB")
    assert cost.price_for(table, "gpu", "NVIDIA A100-PCIE-40GB") == (2.5, "A100")
    assert cost.price_for(table, "gpu", "NVIDIA L4") == (1.0, "gpu")
    assert cost.price_for({"L4": 0.8}, "gpu", "NVIDIA L40S") == (None, cost.UNPRICED)
    assert cost.price_for({"cpu": 0.05, "gpu": 2.0}, "cpu", "cpu") == (0.05, "cpu")
    assert cost.price_for(None, "cpu", "cpu") == (None, "unpriced")
    # A kind key never prices the other kind.
    assert cost.price_for({"gpu": 2.0}, "cpu", "cpu") == (None, "unpriced")


def test_cost_metrics_bill_device_time_and_price_it():
    a100 = cost.Device("gpu", "NVIDIA A100-SXM4-80GB", 0.5, 312e12, "datasheet")
    metrics = cost.cost_metrics(a100, wall_seconds=3600, flops=312e12 * 3600 * 0.25,
                                prices={"A100": 2.5}, energy_kwh=0.2, billed_seconds=7200)
    # Billed: 2 h of half a GPU; MFU is over the compute hour against half the peak.
    assert metrics["device_hours"] == 1.0 and metrics["billed_seconds"] == 7200
    assert metrics["price"] == 2.5 and metrics["energy_kwh"] == 0.2
    assert metrics["mfu"] == pytest.approx(0.5)
    assert metrics["achieved_flops_per_s"] == pytest.approx(312e12 * 0.25)
    plain = cost.cost_metrics(a100, wall_seconds=3600, flops=0.0, prices={"H100": 4.0})
    assert plain["device_hours"] == 0.5 and "price" not in plain  # unpriced: no price metric
    unknown = cost.Device("gpu", "NVIDIA GB200", 1.0, math.nan, "unknown")
    assert math.isnan(cost.cost_metrics(unknown, wall_seconds=10, flops=1e12)["mfu"])


def test_cpu_mfu_is_against_the_peak_of_the_threads_the_process_uses():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cost.current_device(cpus=4)
        assert one.kind == "cpu" and one.count == 4
        assert one.peak_source == "measured: float32 matmul 1024^3 on 1 thread"
        metrics = cost.cost_metrics(one, wall_seconds=10, flops=one.peak_flops * 10 * 0.5)
        # At cpu: 4 Ray gives the process its threads; the peak is theirs, not 4x it.
        assert metrics["mfu"] == pytest.approx(0.5)
        assert metrics["device_hours"] == pytest.approx(4 * 10 / 3600)  # core-hours
        torch.set_num_threads(2)
        two = cost.current_device(cpus=0.5)
        assert two.peak_source == "measured: float32 matmul 1024^3 on 2 threads"
        assert cost.cost_metrics(two, wall_seconds=2, flops=two.peak_flops * 2)["mfu"] == (
            pytest.approx(1.0))
        # Measured once per thread count: the 1-thread figure is the cached one.
        torch.set_num_threads(1)
        assert cost.cpu_peak()[0] == one.peak_flops
        assert set(cost._CPU_PEAKS) >= {1, 2}
    finally:
        torch.set_num_threads(threads)


def test_energy_meter_looks_the_gpu_up_by_uuid_and_is_silent_without_one():
    assert cost.nvml_uuids("5E6A1F3C-1234-5678-9ABC-DEF012345678") == [
        "GPU-5e6a1f3c-1234-5678-9abc-def012345678", "MIG-5e6a1f3c-1234-5678-9abc-def012345678"]
    assert cost.nvml_uuids("GPU-5e6a1f3c-1234-5678-9abc-def012345678") == [
        "GPU-5e6a1f3c-1234-5678-9abc-def012345678"]
    assert cost.nvml_uuids("") == []
    assert cost.pci_bus_id(0, 0x3B, 0) == "00000000:3B:00.0"
    if not torch.cuda.is_available():
        meter = cost.EnergyMeter()
        meter.start()
        assert meter.kwh() is None


# --- analysis ---------------------------------------------------------------------------------

CELL, ARCH, PRE, TOK, TASK = (tag_column(t) for t in (Tag.CELL, Tag.ARCHITECTURE,
                                                      Tag.PRETRAINING, Tag.TOKENIZER, Tag.TASK))
DEVICE_TYPE, DEVICE_NAME = tag_column(Tag.DEVICE_TYPE), tag_column(Tag.DEVICE_NAME)
FLOPS, HOURS = metric_column(MetricName.FLOPS), metric_column(MetricName.DEVICE_HOURS)
PRICE, SCORE = metric_column(MetricName.PRICE), metric_column(MetricName.BEST_DEV_SCORE)
A100 = "NVIDIA A100-SXM4-80GB"


def trials(arch, task, rows, pre="none", tok="char", device=("cpu", "cpu"), start=0):
    """rows: [(outcome, score, flops, device_hours)] in start order -> trial runs."""
    out = []
    for i, (outcome, score, flops, hours) in enumerate(rows):
        out.append({
            CELL: f"{arch}|{pre}|{tok}|{task}", ARCH: arch, PRE: pre, TOK: tok, TASK: task,
            tag_column(Tag.STAGE): Stage.TRIAL, tag_column(Tag.OUTCOME): outcome,
            tag_column(Tag.TRIAL_ID): f"{arch}-{task}-{i}",
            tag_column(Tag.SCHEMA_VERSION): "4", SCORE: score,
            metric_column(MetricName.BEST_DEV_MCC): score, FLOPS: flops, HOURS: hours,
            DEVICE_TYPE: device[0], DEVICE_NAME: device[1],
            "start_time": pd.Timestamp("2026-01-01") + pd.Timedelta(minutes=start + i),
        })
    return out


DONE, PRUNED = Outcome.COMPLETED, Outcome.PRUNED


def test_run_costs_keep_kinds_apart_and_name_what_is_unpriced():
    frame = pd.DataFrame(
        trials("cnn", "t1", [(DONE, 0.5, 1e12, 2.0)])
        + trials("transformer", "t1", [(DONE, 0.6, 1e14, 0.5)], device=("gpu", A100))
        + trials("unet", "t1", [(DONE, 0.4, 1e12, 1.0)], device=(None, None))
        + trials("unet", "t2", [(DONE, 0.4, 1e12, 1.0)], device=(None, "NVIDIA L4")))
    frame.loc[3, PRICE] = 0.7  # priced when it ran: its own price wins
    table = analysis.run_costs(frame, prices={"A100": 2.5})
    assert table["device_type"].tolist() == ["cpu", "gpu", "cpu", "gpu"]
    assert table["device_type_assumed"].tolist() == [False, False, True, True]
    assert table["cpu_core_hours"].tolist() == [2.0, 0.0, 1.0, 0.0]
    assert table["gpu_hours"].tolist() == [0.0, 0.5, 0.0, 1.0]
    assert table["price"].iloc[1] == 1.25 and table["price"].iloc[3] == 0.7
    assert table["price"].iloc[[0, 2]].isna().all()
    assert table["price_source"].tolist() == ["unpriced", "A100", "unpriced", "run"]
    assert table["unpriced"].tolist() == ["cpu", "", "cpu", ""]


def test_cost_benefit_prices_by_device_name_and_never_adds_cpu_to_gpu_hours():
    frame = pd.DataFrame(
        trials("cnn", "t1", [(DONE, 0.5, 1e12, 2.0), (DONE, 0.55, 1e12, 2.0)])
        + trials("transformer", "t1", [(DONE, 0.6, 1e14, 0.5)], device=("gpu", A100)))
    reps = frame.copy()
    reps[tag_column(Tag.STAGE)] = Stage.REPLICATE
    reps[metric_column(MetricName.TEST_SCORE)] = reps[SCORE]
    reps[metric_column(MetricName.TEST_MCC)] = reps[SCORE]
    reps[tag_column(Tag.REPLICATE_SEED)] = "0"
    runs = pd.concat([frame, reps], ignore_index=True)
    table = analysis.cost_benefit(runs, {}, prices={"A100": 2.5}).set_index(["cell", "rule"])
    cnn, tr = ("cnn|none|char|t1", "none"), ("transformer|none|char|t1", "none")
    assert table.loc[cnn, ["cpu_core_hours", "gpu_hours"]].tolist() == [8.0, 0.0]
    assert table.loc[tr, ["cpu_core_hours", "gpu_hours"]].tolist() == [0.0, 1.0]
    assert table.loc[tr, "price"] == 2.5 and table.loc[tr, "unpriced"] == ""
    assert math.isnan(table.loc[cnn, "price"]) and table.loc[cnn, "unpriced"] == "cpu"
    # The CPU cell is unpriced, so the task's front is on FLOPs: both cells are on it.
    assert set(table["pareto_axis"]) == {"flops"} and table["pareto"].all()
    priced = analysis.cost_benefit(runs, {}, prices={"A100": 2.5, "cpu": 0.05})
    assert set(priced["pareto_axis"]) == {"price"}
    assert priced.set_index("cell")["price"].to_dict() == {
        "cnn|none|char|t1": pytest.approx(0.4), "transformer|none|char|t1": 2.5}


def test_pretrain_costs_read_device_and_price_from_mlflow(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    experiment = client.create_experiment(PRETRAIN_EXPERIMENT)

    def run(tags, metrics):
        run_id = client.create_run(experiment, tags=tags).info.run_id
        for name, value in metrics.items():
            client.log_metric(run_id, name, value)
        return run_id

    own = run({Tag.DEVICE_TYPE: "cpu"}, {MetricName.DEVICE_HOURS: 3.0, MetricName.FLOPS: 1e15})
    bare = run({Tag.PRETRAIN_KIND: "external"}, {MetricName.DEVICE_HOURS: 100.0})
    named = run({Tag.PRETRAIN_KIND: "external", Tag.DEVICE_TYPE: "gpu",
                 Tag.DEVICE_NAME: A100}, {MetricName.DEVICE_HOURS: 40.0})
    paid = run({Tag.PRETRAIN_KIND: "external"},
               {MetricName.DEVICE_HOURS: 10.0, MetricName.PRICE: 99.0})
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    costs = analysis.pretrain_costs(uri, [own, bare, named, paid], prices={"A100": 2.5})
    assert (costs[own].device_type, costs[own].flops, costs[own].price) == ("cpu", 1e15, None)
    assert costs[own].hours() == {"cpu_core_hours": 3.0, "gpu_hours": 0.0}
    assert costs[own].money({"A100": 2.5}) == (pytest.approx(np.nan, nan_ok=True), "unpriced")
    # An external checkpoint without a device type counts as a GPU, and says it was assumed.
    assert (costs[bare].device_type, costs[bare].device_type_assumed) == ("gpu", True)
    assert math.isnan(costs[bare].flops) and costs[bare].external  # declared no FLOPs
    assert (costs[named].price, costs[named].price_source) == (100.0, "A100")
    assert costs[paid].money() == (99.0, "run")
    assert analysis.pretrain_costs(uri, [named])[named].price is None  # no table, no price


def test_compute_curves_accumulate_cost_in_start_order_and_mark_pruned_trials():
    rows = trials("cnn", "t1", [(DONE, 0.3, 1e12, 1.0), (PRUNED, 0.2, 5e11, 0.5),
                                (DONE, np.nan, 1e12, 1.0), (DONE, 0.6, 1e12, 1.0)])
    rows[0]["start_time"], rows[1]["start_time"] = rows[1]["start_time"], rows[0]["start_time"]
    gpu = trials("transformer", "t1", [(DONE, 0.5, 1e14, 0.25)], device=("gpu", A100))
    curves = analysis.compute_curves(pd.DataFrame(rows + gpu), prices={"cpu": 0.1})
    cnn = curves[curves["architecture"] == "cnn"]
    assert cnn["trial"].tolist() == ["cnn-t1-1", "cnn-t1-0", "cnn-t1-2", "cnn-t1-3"]
    assert cnn["pruned"].tolist() == [True, False, False, False]
    assert cnn["best_dev_score_so_far"].tolist() == [0.2, 0.3, 0.3, 0.6]
    assert cnn["cumulative_flops"].tolist() == [5e11, 1.5e12, 2.5e12, 3.5e12]
    assert cnn["cumulative_cpu_core_hours"].tolist() == [0.5, 1.5, 2.5, 3.5]
    assert cnn["cumulative_gpu_hours"].tolist() == [0.0] * 4
    assert cnn["cumulative_price"].tolist() == pytest.approx([0.05, 0.15, 0.25, 0.35])
    (tr,) = curves[curves["architecture"] == "transformer"].itertuples()
    assert (tr.cumulative_gpu_hours, tr.cumulative_cpu_core_hours) == (0.25, 0.0)
    assert math.isnan(tr.cumulative_price)  # no price for the A100


def test_equal_compute_compares_cells_at_the_smallest_search_budget():
    frame = pd.DataFrame(
        trials("convnova", "t1", [(DONE, 0.4, 1e12, 1.0), (DONE, 0.5, 1e12, 1.0),
                                  (PRUNED, 0.45, 5e11, 0.5)])
        + trials("transformer", "t1", [(DONE, 0.55, 1e12, 1.0), (DONE, 0.7, 1e14, 1.0)])
        + trials("dnabert2", "t1", [(DONE, 0.8, 1e13, 1.0)])
        + trials("kmer", "t1", [(DONE, 0.3, 1e6, 0.01)])
        + trials("cnn", "t2", [(DONE, 0.6, 1e12, 1.0)]))
    table = analysis.equal_compute(frame).set_index("cell")
    t1 = table[table["task"] == "t1"]
    # ConvNova's whole search (2.5e12) is the budget; the k-mer floor does not set it.
    assert set(t1["budget_flops"]) == {2.5e12}
    assert set(t1["budget_cell"]) == {"convnova|none|char|t1"}
    assert t1["best_dev_score_at_budget"].to_dict() == pytest.approx({
        "convnova|none|char|t1": 0.5, "transformer|none|char|t1": 0.55,
        "dnabert2|none|char|t1": np.nan, "kmer|none|char|t1": 0.3}, nan_ok=True)
    assert t1["best_dev_score"].to_dict() == {
        "convnova|none|char|t1": 0.5, "transformer|none|char|t1": 0.7,
        "dnabert2|none|char|t1": 0.8, "kmer|none|char|t1": 0.3}
    assert t1["trials_within_budget"].to_dict() == {
        "convnova|none|char|t1": 3, "transformer|none|char|t1": 1,
        "dnabert2|none|char|t1": 0, "kmer|none|char|t1": 1}
    assert table.loc["cnn|none|char|t2", "budget_flops"] == 1e12


# --- figures ----------------------------------------------------------------------------------


def _panel_colours(ax):
    return [tuple(np.round(c.get_facecolor()[0], 4)) for c in ax.collections
            if len(c.get_offsets()) and c.get_facecolor().size]


def test_compute_curves_plot_has_a_panel_per_task_and_one_colour_per_condition(tmp_path):
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(
        trials("cnn", "t1", [(DONE, 0.3, 1e12, 1.0), (PRUNED, 0.4, 1e12, 1.0)])
        + trials("transformer", "t1", [(DONE, 0.5, 1e14, 1.0)])
        + trials("transformer", "t2", [(DONE, 0.6, 1e14, 1.0)]))
    fig = plots.compute_curves_figure(analysis.compute_curves(frame))
    try:
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in axes] == ["t1", "t2"]
        assert all(ax.get_xscale() == "log" for ax in axes)
        colours = plots.condition_colours(["cnn/none/char", "transformer/none/char"])
        transformer = tuple(np.round(colours["transformer/none/char"], 4))
        assert transformer in _panel_colours(axes[0]) and _panel_colours(axes[1]) == [
            transformer]
    finally:
        plt.close(fig)
    path = tmp_path / "compute.png"
    plots.plot_compute_curves(analysis.compute_curves(frame), path)
    # The legend sits outside the axes and is kept: the image is wider than the figure.
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > 2 * 4.6 * 100 and height > 0


def test_compute_curves_plot_a_task_whose_trials_all_failed(tmp_path):
    """A task with no dev score yet (every trial failed) gets a panel that says so; the
    other tasks' panels are drawn as ever (this raised on a log axis with no data)."""
    import matplotlib.pyplot as plt

    failed = trials("cnn", "t2", [(Outcome.MODEL_FAILED, np.nan, 1e12, 1.0)] * 2)
    frame = pd.DataFrame(trials("cnn", "t1", [(DONE, 0.3, 1e12, 1.0)]) + failed)
    fig = plots.compute_curves_figure(analysis.compute_curves(frame))
    try:
        first, second = [ax for ax in fig.axes if ax.get_visible()]
        assert (first.get_title(), second.get_title()) == ("t1", "t2")
        assert first.get_xscale() == "log" and first.lines
        assert [t.get_text() for t in second.texts] == ["no trial with a dev score yet"]
    finally:
        plt.close(fig)
    plots.plot_compute_curves(analysis.compute_curves(frame), tmp_path / "compute.png")
    assert (tmp_path / "compute.png").stat().st_size > 0


def test_cost_benefit_plot_gives_each_task_its_own_panels(tmp_path):
    import matplotlib.pyplot as plt

    rows = []
    for cell, task, price, flops in [("a", "t1", 1.0, 1e12), ("b", "t1", 2.0, 1e14),
                                     ("a", "t2", 3.0, 2e12), ("b", "t2", np.nan, 3e14)]:
        for rule in ("none", "per-task", "full"):
            rows.append({"cell": f"{cell}|none|char|{task}", "architecture": cell,
                         "pretraining": "none", "tokenizer": "char", "task": task,
                         "family": "convolutional", "rule": rule, "test_score": 0.5,
                         "price": price, "flops": flops, "pareto": True,
                         "pareto_axis": "price" if task == "t1" else "flops"})
    frame = pd.DataFrame(rows)
    fig = plots.cost_benefit_figure(frame)
    try:
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert [ax.get_title() for ax in axes] == [
            "t1: money (price-table units)", "t1: FLOPs",
            "t2: money (price-table units) (3 points unpriced)", "t2: FLOPs"]
        colours = plots.condition_colours(["a/none/char", "b/none/char"])
        b = tuple(np.round(colours["b/none/char"], 4))
        assert b in _panel_colours(axes[1]) and b in _panel_colours(axes[3])
        assert b not in _panel_colours(axes[2])  # b is unpriced on t2: not drawn on money
    finally:
        plt.close(fig)
    plots.plot_cost_benefit(frame, tmp_path / "benefit.png")
    assert matplotlib.image.imread(tmp_path / "benefit.png").shape[1] > 4 * 4.6 * 100
