"""The command line: `dlpipe run` plus one subcommand per stage. A thin typer layer.

A `DlpipeError` is printed as ``error: <message>`` without a traceback and exits 2;
`--debug` shows the traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dlpipe.errors import DlpipeError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="The deep-learning workflow from one declarative YAML file.")
out = Console()
_debug = False
_LOG_WIDTH = 200

SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config field by dotted path: a.b.c=VALUE (repeatable).")]
RunDirArg = Annotated[Path, typer.Argument(help="A run directory made by `dlpipe run`.")]


@app.callback()
def _main(debug: Annotated[bool, typer.Option(help="Show tracebacks of errors.")] = False) -> None:
    global _debug
    _debug = debug
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = _LOG_WIDTH  # a log or a pipe: don't cut tables to 80 columns


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="The pipeline's YAML file.")],
    run_dir: Annotated[Path | None, typer.Option(help="Where to write the run.")] = None,
    set_: SetOption = None,
) -> None:
    """Run every stage of a pipeline; print the test metrics and the run directory."""
    from dlpipe.pipeline import run as run_pipeline

    result = run_pipeline(config, run_dir=run_dir, overrides=set_ or ())
    if not result.rundir.writable:  # another process of a torchrun job: rank 0 reports
        return
    _print_metrics(result.metrics)
    _print_compress(result.rundir)
    out.print(f"run directory: {result.path}")


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="The pipeline's YAML file.")],
             set_: SetOption = None) -> None:
    """Check a config file (types, names, builder arguments) without running anything."""
    from dlpipe.config import load_config
    from dlpipe.pipeline import check

    check(load_config(config, set_ or ()))
    out.print(f"{config}: valid")


@app.command()
def schema(output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Write it to this file instead of printing it.")] = None) -> None:
    """Print the JSON Schema of config files (for editor completion)."""
    from dlpipe.config import json_schema

    text = json.dumps(json_schema(), indent=2)
    if output is None:
        sys.stdout.write(text + "\n")
    else:
        from dlpipe.runs import atomic_write

        atomic_write(output, text.encode())
        out.print(f"JSON Schema written to {output}")


@app.command()
def data(rundir: RunDirArg, set_: SetOption = None) -> None:
    """Load, clean and split the data of a run again."""
    from dlpipe.runs import SPLITS, RunDir

    _stage("data", rundir, set_)
    run_dir = RunDir.open(rundir)
    rows = ", ".join(f"{s} {run_dir.split_rows(s):,}" for s in SPLITS)
    out.print(f"splits written to {rundir / 'data'} ({rows} rows)")


@app.command()
def features(rundir: RunDirArg, set_: SetOption = None) -> None:
    """Fit the preprocessing on the run's training split."""
    _stage("features", rundir, set_)
    out.print(f"preprocessing written to {rundir / 'features.json'}")


@app.command()
def tune(
    config: Annotated[Path, typer.Argument(help="The pipeline's YAML file, with a `tune:` "
                                                "section.")],
    run_dir: Annotated[Path | None, typer.Option(help="Where to write the run; an existing "
                                                      "one resumes its study.")] = None,
    set_: SetOption = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage: an SQLAlchemy URL or a "
                                                     "journal file; default in the run.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name; the same storage and name "
                                                   "join one study.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes on this "
                                                            "machine.")] = None,
    n_trials: Annotated[int | None, typer.Option(min=1, help="Trials in the study in "
                                                             "all.")] = None,
) -> None:
    """Search hyperparameters on the train and val splits; write the best config to the run."""
    from dlpipe.tune import search

    result = search(config, run_dir=run_dir, overrides=set_ or (), storage=storage, study=study,
                    workers=workers, n_trials=n_trials)
    states = {k: v for k, v in result.summary["states"].items() if v}
    out.print(f"study {result.study!r}: {result.summary['trials']} trials "
              f"({', '.join(f'{v} {k.lower()}' for k, v in states.items())}), "
              f"{result.summary['epochs_trained']} epochs trained")
    out.print(f"best: trial {result.best_trial}, {result.metric} = {result.best_value:.6g}")
    for path, value in result.best_params.items():
        out.print(f"  {path} = {value!r}", markup=False, highlight=False)
    out.print(f"run directory: {result.path}", soft_wrap=True)
    out.print(f"retrain and test the best config: dlpipe train {result.path} && "
              f"dlpipe evaluate {result.path}", soft_wrap=True)


@app.command()
def train(
    rundir: RunDirArg,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    set_: SetOption = None,
) -> None:
    """Train the model of a run (from scratch, or resumed)."""
    trained = _stage("train", rundir, set_, resume=resume)
    summary = trained.summary
    kept = (f"kept epoch {summary['best_epoch']} ({summary.get('monitor')} "
            f"{_fmt(summary.get('best_value'))})" if summary.get("kept") == "best"
            else "kept the last epoch")
    stopped = f"; {summary['stop_reason']}" if summary.get("stop_reason") else ""
    out.print(f"trained {summary.get('epochs_run')} epochs{stopped}; {kept}; weights written "
              f"to {rundir / 'weights.safetensors'}", soft_wrap=True)


@app.command()
def evaluate(rundir: RunDirArg, set_: SetOption = None) -> None:
    """Evaluate a trained run on its validation and test splits."""
    metrics = _stage("evaluate", rundir, set_)
    _print_metrics(metrics)
    out.print(f"metrics, curves and test predictions written to {rundir}")


@app.command()
def finetune(
    rundir: Annotated[Path, typer.Argument(help="The trained run to start from (the parent).")],
    data: Annotated[str, typer.Option(help="The new data: a file (CSV, Parquet, JSON Lines, "
                                           ".npz), builtin:NAME, or a YAML data.source "
                                           "mapping.")],
    run_dir: Annotated[Path | None, typer.Option(help="Where to write the new run.")] = None,
    set_: SetOption = None,
    refit_features: Annotated[bool, typer.Option(help="Refit the preprocessing on the new "
                                                      "training split.")] = False,
) -> None:
    """Fine-tune a trained run on new data, in a new run; print metrics before and after."""
    from dlpipe.pipeline import finetune as finetune_run

    result = finetune_run(rundir, data=data, run_dir=run_dir, overrides=set_ or (),
                          refit_features=refit_features or None)
    split = result.report["split"]
    table = Table(title=f"{split} metrics on the new data")
    for column in ("metric", "before (parent)", "after", "change"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    before, after = result.before[split], result.after[split]
    for name, value in after.items():
        if isinstance(value, float | int | None) and not isinstance(value, bool):
            old = before.get(name)
            change = value - old if isinstance(value, float) and isinstance(old, float) else None
            table.add_row(name, _fmt(old), _fmt(value),
                          "—" if change is None else f"{change:+.4f}")
    out.print(table)
    out.print(f"run directory: {result.path} (fine-tuned from {result.report['parent']})")


@app.command()
def predict(
    rundir: RunDirArg,
    input: Annotated[Path, typer.Argument(help="CSV, Parquet, JSON Lines or .npz rows, or "
                                          "an image file or folder for an image model.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write predictions "
                                         "(.csv, .parquet or .jsonl).")],
    chunk_rows: Annotated[int, typer.Option(help="Rows read at a time from a Parquet or CSV "
                                                 "file of a tabular model.")] = 65_536,
    encoding: Annotated[str, typer.Option(help="Text encoding of a CSV input (latin-1, "
                                               "cp1252, ...).")] = "utf-8",
    sep: Annotated[str, typer.Option(help="Field separator of a CSV input: ';', '|', "
                                          "'\\t' (a tab), ...")] = ",",
) -> None:
    """Predict rows of a file with a trained run.

    A Parquet or CSV file for a model of tabular columns is streamed: read, predicted and
    written chunk by chunk, so it may be larger than memory.
    """
    from dlpipe.predict import load, read_rows, write_predictions

    predictor = load(rundir)
    if (input.suffix.lower() in (".parquet", ".pq", ".csv") and not predictor.fitted.text
            and not predictor.fitted.images):
        count = predictor.predict_file(input, output, chunk_rows=chunk_rows, encoding=encoding,
                                       sep=sep)
        out.print(f"{count} predictions written to {output}")
        return
    rows = read_rows(input, predictor.fitted, encoding=encoding, sep=sep)
    prediction = predictor.predict(rows)
    paths = [c for c in predictor.fitted.images if c in rows.columns and rows[c].map(
        lambda v: isinstance(v, str)).all()]
    write_predictions(prediction, output, inputs=rows[paths] if paths else None)
    out.print(f"{len(prediction.labels)} predictions written to {output}")


@app.command()
def compress(rundir: RunDirArg, set_: SetOption = None) -> None:
    """Prune, quantize and cast a trained run's model within the accuracy guard; print the
    comparison (the `compress:` section of the config, or its defaults)."""
    from dlpipe.compress.report import table

    out.print(table(_stage("compress", rundir, set_)))


@app.command()
def export(
    rundir: RunDirArg,
    out_dir: Annotated[Path | None, typer.Option("--out", help="The bundle's folder; default "
                                                 "export/ in the run directory.")] = None,
    set_: SetOption = None,
) -> None:
    """Export a trained (and compressed) run as a deployable bundle: ONNX, preprocessing,
    signature, weights, model card."""
    path = _stage("export", rundir, set_, out=out_dir)
    out.print(f"bundle written to {path}")


@app.command()
def serve(
    path: Annotated[Path, typer.Argument(help="A run directory, an export bundle, or a "
                                              "folder of either.")],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    name: Annotated[str | None, typer.Option(help="The model's name in URLs (one bundle); "
                                                  "default the run's name.")] = None,
    precision: Annotated[str, typer.Option(help="fp32, int8 or fp16: the graph to run, when "
                                                "the bundle has it.")] = "fp32",
    workers: Annotated[int, typer.Option(help="Server processes.")] = 1,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads per model.")] = 1,
    max_batch_size: Annotated[int, typer.Option(help="Most rows per ONNX Runtime call.")] = 64,
    max_delay_ms: Annotated[float, typer.Option(help="Longest wait for a batch to "
                                                     "fill.")] = 2.0,
    target_p99_ms: Annotated[float | None, typer.Option(
        help="Tune max batch size and delay at start-up for this p99 latency.")] = None,
    max_queue: Annotated[int, typer.Option(help="Waiting requests per model before "
                                                "503.")] = 1024,
    max_rows: Annotated[int, typer.Option(help="Rows per request.")] = 1024,
    max_body_bytes: Annotated[int, typer.Option(help="Request body limit (after "
                                                     "decompression).")] = 1 << 20,
    timeout_s: Annotated[float, typer.Option(help="Per-request deadline (504).")] = 10.0,
    drift_threshold: Annotated[float, typer.Option(help="PSI that logs a drift "
                                                        "alert.")] = 0.2,
    log_requests: Annotated[Path | None, typer.Option(help="JSON Lines file for sampled "
                                                           "requests and predictions.")] = None,
    log_sample_rate: Annotated[float, typer.Option(help="Share of requests "
                                                        "logged.")] = 1.0,
) -> None:
    """Serve bundles over HTTP: /predict on raw rows, the KServe v2 protocol, /metrics
    (docs/SERVE.md). Runs until SIGTERM or Ctrl-C, then drains in-flight requests."""
    from pydantic import ValidationError

    from dlpipe.errors import ConfigError
    from dlpipe.serve import ServeSettings
    from dlpipe.serve import serve as run_server

    options = {k: v for k, v in locals().items() if k != "ValidationError"
               and k not in ("ConfigError", "ServeSettings", "run_server")}
    try:
        settings = ServeSettings(**options)
    except ValidationError as exc:
        raise ConfigError([(f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}", e["msg"])
                           for e in exc.errors()]) from None
    run_server(settings)


@app.command()
def report(rundir: RunDirArg) -> None:
    """Write the run's self-contained report.html (and plots/*.png) from its files alone."""
    from dlpipe.report import write_report
    from dlpipe.runs import RunDir

    # Not through `_stage`: the report needs no valid config (nor the extras it names).
    run_dir = RunDir.open(rundir)
    with run_dir.stage_timer("report"):
        path = write_report(run_dir)
    out.print(f"report written to {path}")


@app.command()
def compare(
    rundirs: Annotated[list[Path], typer.Argument(help="Two or more run directories.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the "
                                         "page.")] = Path("compare.html"),
) -> None:
    """Write one HTML page comparing runs: config differences, metrics, learning curves."""
    from dlpipe.report import compare as compare_runs

    path = compare_runs(rundirs, output)
    out.print(f"comparison of {len(rundirs)} runs written to {path}")


def _print_compress(rundir: Any) -> None:
    from dlpipe import runs

    if rundir.has(runs.COMPRESS_REPORT):
        from dlpipe.compress.report import table

        out.print(table(rundir.read_json(runs.COMPRESS_REPORT)))


def _stage(stage: str, path: Path, overrides: list[str] | None, **options: Any) -> Any:
    """Run `stage` again on the run at `path` (`pipeline.rerun`); say what else changed."""
    from dlpipe.pipeline import rerun
    from dlpipe.train.distributed import is_main_process

    # Under torchrun, rank 0 writes and speaks.
    done = rerun(stage, path, overrides or (), writable=is_main_process(), **options)
    if not done.rundir.writable:
        return done.outcome
    if done.for_this_command:
        out.print(f"note: {', '.join(done.for_this_command)} held for this command only; "
                  f"config.yaml keeps what the earlier stages ran with", soft_wrap=True)
    if done.removed:
        again = " && ".join(f"dlpipe {s} {path}" for s in done.removed if s in _RERUNNABLE)
        out.print(f"removed the {', '.join(done.removed)} results (they described the "
                  f"previous {stage})" + (f"; to make them again: {again}" if again else ""),
                  soft_wrap=True)
    if done.report is not None:
        out.print(f"report written to {done.report}")
    return done.outcome


_RERUNNABLE = ("data", "features", "train", "evaluate", "compress", "export")


def _print_metrics(metrics: dict[str, Any]) -> None:
    splits = [s for s in ("val", "test") if s in metrics]
    if not splits:
        return
    table = Table(title="metrics")
    table.add_column("metric")
    for split in splits:
        table.add_column(split, justify="right")
    names = [k for k, v in metrics[splits[-1]].items() if isinstance(v, float | int | None)]
    for name in names:
        table.add_row(name, *(_fmt(metrics[s].get(name)) for s in splits))
    out.print(table)
    if "cv" in metrics:
        cv = Table(title=f"cross-validation ({metrics['cv'].get('folds', '?')} folds)")
        cv.add_column("metric")
        cv.add_column("mean ± std", justify="right")
        for name, stats in metrics["cv"].get("metrics", {}).items():
            cv.add_row(name, f"{stats['mean']:.4f} ± {stats['std']:.4f}")
        out.print(cv)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def main() -> None:
    """Console entry point: DlpipeError → `error: ...` on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except DlpipeError as exc:
        if _debug:
            raise
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code)
    except Exception as exc:  # usage errors come here in non-standalone mode
        # Typer vendors its own copy of click in recent releases, so the usage errors are
        # recognised by what they do (show themselves, carry an exit code), not by class.
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None),
                                                               int):
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            sys.exit(1)
        raise
