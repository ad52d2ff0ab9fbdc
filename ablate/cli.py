"""The ``ablate`` command. Thin: parse options, call one function per verb, print the result.

Errors a user can fix (``AblateError``) are printed without a traceback, exit status 2. Heavy
libraries are imported inside the verbs, so ``ablate --help`` and ``ablate data check`` start
fast.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from ablate.errors import AblateError

app = typer.Typer(
    help="Fair, distributed ablation studies of DNA language models on GUE.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="Inspect GUE folders and generate synthetic GUE-shaped data.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


def _user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print an AblateError as one clear message and exit 2, with no traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AblateError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper


def _console() -> Any:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or logged: do not squeeze tables into 80 columns
        console = Console(width=160)
    return console


AddressOption = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (default: start Ray locally)")
]
TrackingOption = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow tracking URI (default: the spec's tracking.uri)"),
]
VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose",
        help="leave Ray's, Tune's, Ray Data's and MLflow's own output on the console (default: "
        "in a log file under the work folder, named at the start)",
    ),
]
SweepOption = Annotated[
    str | None,
    typer.Option(
        "--sweep", help="a sweep id other than the latest (`ablate sweeps STUDY` lists them)"
    ),
]


@data_app.command("check")
@_user_errors
def data_check(
    directory: Annotated[Path, typer.Argument(help="GUE root: <dir>/<group>/<dataset>/*.csv")],
) -> None:
    """Validate a GUE folder: datasets, rows per split, what is missing, leaks and caveats.

    Leaks across tasks: for each pair of datasets (A, B), A's dev/test rows that equal or lie
    inside B's train rows (either strand). Caveats: negatives with exactly the dinucleotide
    composition of a positive.
    """
    from rich.table import Table

    from ablate.data.gue import SPLITS, check_gue_dir

    started = time.perf_counter()
    check = check_gue_dir(directory)
    statuses = check.statuses
    table = Table(title=f"GUE datasets in {directory}")
    table.add_column("dataset")
    for split in SPLITS:
        table.add_column(split, justify="right")
    table.add_column("status")
    table.add_column("dev/test also in train", justify="right")
    for status in statuses:
        counts = ["missing" if status.rows[s] is None else f"{status.rows[s]:,}" for s in SPLITS]
        state = "complete" if status.complete else f"incomplete ({', '.join(status.missing)})"
        leak = " / ".join(str(status.in_train.get(s, "-")) for s in ("dev", "test"))
        table.add_row(status.key, *counts, state, leak if status.in_train else "-")
    console = _console()
    console.print(table)
    complete = sum(s.complete for s in statuses)
    train_missing = sum("train" in s.missing for s in statuses)
    console.print(
        f"{len(statuses)} datasets found: {complete} complete, "
        f"{train_missing} with train missing, {len(statuses) - complete} incomplete in all"
    )
    leaking = [s.key for s in statuses if any(s.in_train.values())]
    if leaking:
        console.print(
            f"{len(leaking)} datasets have dev/test sequences that also occur in train "
            f"({', '.join(leaking)}); a study can drop them from train with "
            "data.drop_train_duplicates: true"
        )
    _print_overlap(console, check.overlap)
    _print_caveats(console, check.caveats)
    console.print(f"checked in {time.perf_counter() - started:.1f} s", highlight=False)


def _print_overlap(console: Any, overlap: Any) -> None:
    """The cross-task table: non-zero pairs only."""
    from rich.table import Table

    if not overlap.pairs:
        console.print(
            "no dev/test row of any dataset equals or lies inside a train row of "
            f"another ({overlap.seconds:.1f} s)"
        )
        return

    def cell(pair: Any, split: str, strand: int) -> str:
        if split not in pair.hits:
            return "-"
        found = pair.hits[split][strand]
        return f"{found:,}/{pair.rows[split]:,}" if found else "0"

    table = Table(
        title="dev/test rows of A equal to or inside train rows of B "
        "(rev. comp.: the reverse complement is)"
    )
    for column in ("A (dev/test)", "B (train)"):
        table.add_column(column)
    for column in ("dev", "test", "dev rev. comp.", "test rev. comp."):
        table.add_column(column, justify="right")
    for pair in sorted(overlap.pairs, key=lambda p: (p.held_out, p.train)):
        table.add_row(
            pair.held_out,
            pair.train + (" (itself)" if pair.train == pair.held_out else ""),
            cell(pair, "dev", 0),
            cell(pair, "test", 0),
            cell(pair, "dev", 1),
            cell(pair, "test", 1),
        )
    console.print(table)
    across = sorted({p.held_out for p in overlap.pairs if p.train != p.held_out})
    console.print(
        f"{len(overlap.pairs)} pairs overlap ({overlap.held_out_rows:,} dev/test rows against "
        f"{overlap.train_rows:,} train rows in {overlap.seconds:.1f} s). A pretraining corpus of "
        f"several tasks' train splits would show pretrained cells these rows of {len(across)} "
        "datasets; the held-out filter (ablate.leakage.HeldOut) removes them from it",
        highlight=False,
    )


def _print_caveats(console: Any, caveats: list) -> None:
    """Composition-matched negatives per binary dataset, and a sentence for each flagged one."""
    from rich.table import Table

    def pct(values: dict, split: str) -> str:
        return f"{values[split]:.1%}" if split in values else "-"

    table = Table(
        title="negatives with exactly the dinucleotide composition of a positive "
        "(chance: positives matching another positive)"
    )
    table.add_column("dataset")
    for column in (
        "train",
        "dev",
        "test",
        "dev vs train",
        "test vs train",
        "chance (max)",
        "shuffled",
    ):
        table.add_column(column, justify="right")
    skipped = []
    for caveat in caveats:
        if caveat.num_classes != 2:
            skipped.append(f"{caveat.task} ({caveat.note})")
            continue
        chances = [*caveat.positives_matched.values(), *caveat.positives_matched_train.values()]
        table.add_row(
            caveat.task,
            *(pct(caveat.negatives_matched, s) for s in ("train", "dev", "test")),
            *(pct(caveat.negatives_matched_train, s) for s in ("dev", "test")),
            f"{max(chances, default=0.0):.1%}",
            "yes" if caveat.shuffled else "no",
        )
    console.print(table)
    for caveat in caveats:
        if caveat.statement:
            console.print(caveat.statement, highlight=False)
    if skipped:
        console.print(f"not measured: {'; '.join(skipped)}", highlight=False)


@data_app.command("synth")
@_user_errors
def data_synth(
    out_dir: Annotated[Path, typer.Argument(help="folder to write GUE-shaped data into")],
    scale: Annotated[float, typer.Option(help="dataset sizes times this factor")] = 0.05,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    task: Annotated[
        list[str] | None, typer.Option(help="only this dataset (repeatable), e.g. tf/0")
    ] = None,
) -> None:
    """Write SYNTHETIC GUE-shaped data (same layout, lengths, classes; planted motifs)."""
    from ablate.data.synthetic import write_synthetic_gue

    start = time.perf_counter()
    root = write_synthetic_gue(out_dir, scale=scale, seed=seed, tasks=task or None)
    print(
        f"wrote synthetic GUE-shaped data (not real GUE) to {root} "
        f"in {time.perf_counter() - start:.1f} s"
    )


@app.command("run")
@_user_errors
def run(
    study: Annotated[Path, typer.Argument(help="study spec (YAML)")],
    address: AddressOption = None,
    tracking_uri: TrackingOption = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="where trial checkpoints, Tune state and shards go: s3://, gs:// or a path "
            "every node sees (default: work_dir)"
        ),
    ] = None,
    gue_dir: Annotated[
        Path | None, typer.Option(help="read real GUE from this folder instead of the spec's data")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="continue the study's latest sweep where it stopped")
    ] = False,
    sweep: SweepOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Run every cell of a study as one Ray Tune experiment, tracked in MLflow.

    Ctrl-C (SIGINT) or SIGTERM stops the study cleanly and exits 130 or 143; `--resume`
    continues it (its latest sweep, or the one `--sweep` names; `ablate sweeps` lists them).
    A resume is refused if the spec's cells, budget, search spaces or resources changed.

    On a terminal one live table shows the trials of each cell and its best score so far;
    piped or logged, one line per finished trial and a progress line every minute. Ray's own
    output goes to the log file named at the start, unless `--verbose`.
    """
    from ablate.console import StudyConsole, log_file_name
    from ablate.spec import expand_cells, load_study

    spec = load_study(study)
    cells = expand_cells(spec)
    print(
        f"study {spec.name}: {len(cells)} cells x {spec.budget.trials_per_cell} trials, "
        f"up to {spec.budget.max_epochs} epochs, {spec.budget.concurrent_trials} at once"
    )
    from ablate.study import StudyInterrupted, run_study

    options = {
        "--address": address,
        "--tracking-uri": tracking_uri,
        "--storage": storage,
        "--gue-dir": gue_dir,
        "--sweep": sweep,
    }
    resume_command = shlex.join(
        [
            "ablate",
            "run",
            str(study),
            *(part for name, value in options.items() if value for part in (name, str(value))),
            "--resume",
        ]
    )
    start = time.perf_counter()
    console = StudyConsole(verbose=verbose, log_path=log_file_name(spec.work_path, "run"))
    with console, _naming_the_log(console):
        try:
            result = run_study(
                spec,
                address=address,
                tracking_uri=tracking_uri,
                storage=storage,
                gue_dir=str(gue_dir) if gue_dir else None,
                resume=resume,
                progress=console.progress(),
                spec_file=study,
                resume_command=resume_command,
                sweep_id=sweep,
            )
        except StudyInterrupted as stopped:
            print(
                f"stopped by {stopped.signal_name} after {time.perf_counter() - start:.0f} s; "
                f"the study's state is saved. Continue it with: {resume_command}",
                flush=True,
            )
            raise typer.Exit(stopped.exit_code) from None
    print(
        f"finished {result.num_trials} trials ({result.num_errors} failed) in "
        f"{time.perf_counter() - start:.0f} s; sweep {result.sweep} in {result.tracking_uri}"
    )


@contextmanager
def _naming_the_log(console: Any) -> Iterator[None]:
    """Name the log file the libraries' output goes to, at the start and again (on stderr)
    if the command crashes (a user's mistake, an ``AblateError``, says all there is)."""
    if console.log_path is not None:
        console.say(f"Ray's logs: {console.log_path}")
    try:
        yield
    except (typer.Exit, KeyboardInterrupt, AblateError):
        raise
    except BaseException:
        if console.log_path is not None:
            print(f"Ray's logs: {console.log_path}", file=sys.stderr, flush=True)
        raise


@app.command("pretrain")
@_user_errors
def pretrain(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="pretraining spec (YAML)")],
    address: AddressOption = None,
    tracking_uri: TrackingOption = None,
    storage: Annotated[
        str | None, typer.Option(help="Ray Train storage path or URL (default: work_dir)")
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Masked-LM pretraining on Ray Train, registered in MLflow with its cost (resumable).

    Ray's own output goes to the log file named at the start, unless `--verbose`."""
    from ablate.console import StudyConsole, log_file_name
    from ablate.spec import load_pretrain_spec

    spec = load_pretrain_spec(spec_path)
    from ablate.pretrain import job_from_spec, run_pretraining
    from ablate.ray_session import start_ray

    console = StudyConsole(verbose=verbose, log_path=log_file_name(spec.work_path, "pretrain"))
    with console, _naming_the_log(console):
        job = job_from_spec(spec, progress=console.progress())
        start_ray(address, cpus=math.ceil(spec.workers * spec.cpus_per_worker) + 1)
        result = run_pretraining(
            job,
            tracking_uri=tracking_uri or spec.tracking.uri,
            work_dir=spec.work_path,
            storage=storage,
            progress=console.progress(),
        )
    state = "reused" if result.reused else "finished"
    print(
        f"pretraining {state}: MLflow run {result.run_id}, {result.wall_seconds:.0f} s, "
        f"{result.device_hours:.4f} device-hours, {result.flops:.3g} FLOPs, "
        f"{result.tokens_seen:,} tokens; model at {result.model_dir}"
    )


@app.command("report")
@_user_errors
def report(
    study: Annotated[Path, typer.Argument(help="study spec (YAML)")],
    out: Annotated[Path | None, typer.Option(help="output folder")] = None,
    tracking_uri: TrackingOption = None,
    sweep: SweepOption = None,
) -> None:
    """Query MLflow for the study's latest sweep (or `--sweep ID`) and write the report (md,
    html, csv, png)."""
    from rich.table import Table

    from ablate.report import write_report
    from ablate.spec import load_study

    spec = load_study(study)
    uri = tracking_uri or spec.tracking.uri
    out_dir = out or Path("reports") / spec.name
    result = write_report(
        uri,
        spec.name,
        out_dir,
        sweep=sweep,
        contrasts=spec.contrasts,
        trials_per_cell=spec.budget.trials_per_cell,
        replicates_per_cell=len(spec.replicates),
        prices=dict(spec.prices),
    )
    table = Table(title=f"study {spec.name} (sweep {result.sweep})")
    for column in ("task", "architecture", "pretraining", "tokenizer"):
        table.add_column(column)
    for column in (
        "trials (done/stopped/model failed/infra failed)",
        "best dev score",
        "wall s",
        "FLOPs",
    ):
        table.add_column(column, justify="right")
    for row in result.cells.itertuples():
        table.add_row(
            row.task,
            row.architecture,
            row.pretraining,
            row.tokenizer,
            f"{row.budget_trials} ({row.completed}/{row.pruned}/{row.model_failed}/{row.failed})",
            f"{row.best_dev_score:.4f} {row.metric}",
            f"{row.wall_seconds:.1f}",
            f"{row.flops:.3g}",
        )
    console = _console()
    for line in result.unfinished:
        console.print(line.replace("**", ""), highlight=False)
    for line in result.summary:
        console.print(line.replace("**", ""), highlight=False)
    console.print(table)
    console.print(f"report: {result.markdown.resolve()} (and report.html beside it)")
    if uri.startswith("sqlite:") or "://" not in uri:
        console.print(f"MLflow UI: mlflow ui --backend-store-uri {uri}  (then open the URL shown)")
    else:
        console.print(f"MLflow UI: {uri}")


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


@app.command("sweeps")
@_user_errors
def sweeps(
    study: Annotated[
        Path, typer.Argument(help="study spec (YAML), or the study's name with --tracking-uri")
    ],
    tracking_uri: TrackingOption = None,
) -> None:
    """List the study's sweeps in the tracking store, newest first: id, when it was opened,
    state, cells, trials done against the budget, and which one is the latest."""
    from rich.table import Table

    from ablate.tracking.reader import SweepState, list_sweeps

    if study.is_file():
        from ablate.spec import load_study

        spec = load_study(study)
        name, uri = spec.name, tracking_uri or spec.tracking.uri
    elif study.suffix in (".yaml", ".yml"):
        raise AblateError(f"{study}: study spec not found")
    else:
        name, uri = str(study), tracking_uri or "sqlite:///mlruns.db"
    records = list_sweeps(uri, name)
    console = _console()
    if not records:
        console.print(f"study {name} has no sweeps in {uri}", highlight=False)
        return
    table = Table(title=f"sweeps of study {name} in {uri}, newest first")
    for column in ("sweep", "opened", "state"):
        table.add_column(column)
    for column in ("cells", "trials done / budget", "running"):
        table.add_column(column, justify="right")
    table.add_column("last activity")
    table.add_column("latest")
    for record in records:
        budget = record.trials_budget
        table.add_row(
            record.sweep,
            _when(record.opened),
            record.state,
            str(len(record.cell_runs)),
            f"{record.trials_done} / {budget if budget is not None else '?'}",
            str(record.trials_running),
            _when(record.last_activity),
            "latest" if record.latest else "",
        )
    console.print(table)
    notes = [
        "latest: the newest sweep whose search started; `ablate report` reads it and "
        "`ablate run --resume` continues it (--sweep ID names another).",
        "trials done: trials counted against the budget (completed, stopped early, model "
        "failed); budget: cells x trials per cell, as the sweep was opened with.",
    ]
    states = {r.state for r in records}
    if SweepState.RUNNING in states:
        notes.append(
            "running: its cell runs are still open. A driver at work keeps them so, and so "
            "does one killed outright (SIGKILL, a lost machine): look at last activity; "
            "`ablate run STUDY --resume` continues a killed one."
        )
    if SweepState.INTERRUPTED in states:
        notes.append("interrupted: stopped by Ctrl-C or SIGTERM; `--resume` continues it.")
    if SweepState.NEVER_STARTED in states:
        notes.append(
            "never started: its launch stopped before the search's Tuner started (while "
            "preparing or pretraining), or has not got there yet; it holds no trial and is "
            "never the latest."
        )
    for note in notes:
        console.print(note, highlight=False)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
