"""The trial loop every worker runs, and `--workers N`: N local processes sharing one study.

Each iteration, under the storage's ask lock: fail trials of dead workers (stale heartbeat),
stop if the study holds `n_trials` trials or a grid is exhausted, ask for a trial. Then run
it with a heartbeat and tell Optuna how it ended: COMPLETE with its value, PRUNED, or FAIL
with the reason as the trial's ``fail_reason`` attribute. A failed trial never stops the
study. Workers on other machines run the same loop (`dlpipe tune` with the same `--storage`
and `--study`).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from dlpipe.config import PipelineConfig, load_config
from dlpipe.errors import DlpipeError
from dlpipe.runs import RunDir
from dlpipe.tune._storage import Storage, open_storage
from dlpipe.tune._study import build_pruner, build_sampler, open_study
from dlpipe.tune.objective import FAIL_REASON, WORKER, Search, set_attr

__all__ = ["Budget", "optimize", "spawn"]

log = logging.getLogger("dlpipe.tune")


@dataclass(frozen=True)
class Budget:
    """When a worker stops: the study holds `n_trials` trials, or `timeout_s` has passed."""

    n_trials: int | None
    timeout_s: float | None
    heartbeat_s: float
    grace_s: float


def optimize(study: optuna.Study, search: Search, storage: Storage, budget: Budget, *,
             echo: bool = False) -> int:
    """Run trials until the budget is spent; return how many this worker ran."""
    start = time.monotonic()
    ran = 0
    while budget.timeout_s is None or time.monotonic() - start < budget.timeout_s:
        with storage.ask_lock():
            storage.fail_stale(study, budget.grace_s)
            if budget.n_trials is not None and len(study.get_trials(deepcopy=False)) >= \
                    budget.n_trials:
                break
            sampler = study.sampler
            if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study):
                break
            trial = study.ask()
        run_trial(study, trial, search, storage, budget.heartbeat_s, echo=echo)
        ran += 1
    return ran


def run_trial(study: optuna.Study, trial: optuna.Trial, search: Search, storage: Storage,
              heartbeat_s: float, *, echo: bool = False) -> TrialState:
    """Run one asked trial with a heartbeat and tell the study how it ended."""
    start = time.perf_counter()
    set_attr(trial, WORKER, f"{socket.gethostname()}:{os.getpid()}")
    with storage.heartbeat(storage.trial_id(study, trial.number), heartbeat_s):
        try:
            value = search(trial)
        except optuna.TrialPruned as exc:
            state, note = TrialState.PRUNED, str(exc)
        except KeyboardInterrupt:
            set_attr(trial, FAIL_REASON, "interrupted")
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        except Exception as exc:
            reason = str(exc) if isinstance(exc, DlpipeError) else f"{type(exc).__name__}: {exc}"
            set_attr(trial, FAIL_REASON, reason)
            # Our own errors are expected outcomes (a NaN loss, a bad combination); anything
            # else may be a bug, so it keeps its traceback in the log.
            log.warning("trial %d failed: %s", trial.number, reason,
                        exc_info=not isinstance(exc, DlpipeError))
            state, note = TrialState.FAIL, f"failed: {reason}"
        else:
            study.tell(trial, value, skip_if_finished=True)
            state, note = TrialState.COMPLETE, f"{search.key} = {value:.6g}"
    if state != TrialState.COMPLETE:
        study.tell(trial, state=state, skip_if_finished=True)
    if echo:
        seconds = time.perf_counter() - start
        sys.stderr.write(f"trial {trial.number} {state.name.lower()} in {seconds:.1f} s: "
                         f"{note}\n")
    return state


# -- local worker processes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """Everything a worker process needs, as plain picklable data."""

    rundir: str
    config: dict[str, Any]
    storage: str
    study: str
    seed: int
    threads: int | None
    budget: Budget
    echo: bool


def spawn(jobs: list[Job]) -> list[int]:
    """Run one worker process per job (spawned: no state forked from the parent); wait for
    all of them and return their exit codes (negative: killed by that signal)."""
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=work, args=(job,), name=f"dlpipe-tune-{i}")
             for i, job in enumerate(jobs)]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join()
    except BaseException:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join()
        raise
    return [proc.exitcode if proc.exitcode is not None else -1 for proc in procs]


def work(job: Job) -> None:
    """A worker process: open the run, the storage and the study; run the trial loop."""
    try:
        if job.threads is not None:
            import torch

            torch.set_num_threads(job.threads)
        rundir = RunDir.open(job.rundir)
        cfg = load_config(job.config)
        search, study, storage = connect(cfg, rundir, job.storage, job.study, job.seed)
        optimize(study, search, storage, job.budget, echo=job.echo)
    except DlpipeError as exc:
        sys.stderr.write(f"error: worker {os.getpid()}: {exc}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def connect(cfg: PipelineConfig, rundir: RunDir, spec: str | None, name: str,
            seed: int) -> tuple[Search, optuna.Study, Storage]:
    """The objective, the study and its storage, for one worker."""
    section = cfg.tune
    if section is None:  # checked by the caller; workers get the same config
        raise DlpipeError("tune: the config has no `tune:` section")
    search = Search.prepare(cfg, rundir)
    storage = open_storage(spec, rundir)
    sampler = build_sampler(section, search.space, seed)
    pruner = build_pruner(section, cfg.train.epochs)
    study = open_study(storage, name, direction=search.direction, space=search.space,
                       sampler=sampler, pruner=pruner)
    return search, study, storage
