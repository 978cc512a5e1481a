"""Where the study lives, and what parallel workers need on top of Optuna's storage.

Default: Optuna's journal file in the run directory (``tune/journal.log``), which several
processes on one machine may share. Any SQLAlchemy URL works too (PostgreSQL or MySQL for
workers on several machines; SQLite for a single worker only).

On top of the storage, storage-agnostic:

- heartbeats: a running trial records the time as a user attribute every `heartbeat_s`
  (Optuna's own heartbeat exists for RDB storage only, not for the journal);
- `fail_stale`: a RUNNING trial whose heartbeat is older than the grace period belongs to a
  dead worker, and is marked FAIL with that reason, so it is neither left RUNNING forever
  nor run twice;
- `ask_lock`: local workers count the study's trials and ask for a new one under a file
  lock, so together they run exactly `n_trials` (workers on other machines, sharing an RDB
  storage without the lock, may overshoot by one trial each in a race).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dlpipe import runs
from dlpipe.errors import ConfigError
from dlpipe.runs import RunDir

if TYPE_CHECKING:
    import optuna

#: User attribute holding a running trial's last heartbeat (seconds since the epoch).
HEARTBEAT = "heartbeat"
#: User attribute holding why a trial failed.
FAIL_REASON = "fail_reason"
#: The reason recorded on a trial whose worker stopped sending heartbeats.
STALE_REASON = "no heartbeat for {grace} s: its worker was killed or lost"


class Storage:
    """An Optuna storage plus heartbeats, stale-trial detection and the local ask lock.

    Built from a spec (picklable), so every worker process opens its own connection.
    """

    def __init__(self, spec: str, backend: optuna.storages.BaseStorage,
                 lock_path: Path | None) -> None:
        self.spec = spec
        self.backend = backend
        self.lock_path = lock_path

    # -- trials by number ---------------------------------------------------------------

    def trial_id(self, study: optuna.Study, number: int) -> int:
        study_id = self.backend.get_study_id_from_name(study.study_name)
        return self.backend.get_trial_id_from_study_id_trial_number(study_id, number)

    # -- heartbeats -----------------------------------------------------------------------

    @contextlib.contextmanager
    def heartbeat(self, trial_id: int, interval_s: float) -> Iterator[None]:
        """Record a heartbeat for `trial_id` now and every `interval_s` until the block ends."""
        stop = threading.Event()

        def beat() -> None:
            while True:
                try:
                    self.backend.set_trial_user_attr(trial_id, HEARTBEAT, time.time())
                except Exception:  # the trial was closed (e.g. failed as stale): stop beating
                    return
                if stop.wait(interval_s):
                    return

        thread = threading.Thread(target=beat, name=f"dlpipe-heartbeat-{trial_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def fail_stale(self, study: optuna.Study, grace_s: float) -> list[int]:
        """Mark FAIL every RUNNING trial with no heartbeat for `grace_s`; return their numbers.

        Safe when several workers call it at once: the storage refuses to finish a trial
        twice, and the loser of that race moves on.
        """
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        now = time.time()
        failed = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            last = trial.user_attrs.get(HEARTBEAT)
            if last is None and trial.datetime_start is not None:
                last = trial.datetime_start.timestamp()
            if last is None or now - last <= grace_s:
                continue
            trial_id = self.trial_id(study, trial.number)
            try:
                self.backend.set_trial_user_attr(trial_id, FAIL_REASON,
                                                 STALE_REASON.format(grace=grace_s))
                self.backend.set_trial_state_values(trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue
            failed.append(trial.number)
        return failed

    # -- the ask lock -------------------------------------------------------------------

    @contextlib.contextmanager
    def ask_lock(self) -> Iterator[None]:
        """Hold a file lock next to a journal file (a no-op for database storages)."""
        if self.lock_path is None:
            yield
            return
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; the budget may overshoot in a race
            yield
            return
        with open(self.lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def open_storage(spec: str | None, rundir: RunDir) -> Storage:
    """Open the study's storage: a journal file (default ``tune/journal.log`` of `rundir`, or a
    path) or an SQLAlchemy URL (anything with ``://``). `TuneConfig` refuses SQLite for more
    than one worker (Optuna's FAQ: concurrent writes lock the file).

    Raises:
        ConfigError: a URL the database refuses.
    """
    import optuna

    if spec is not None and "://" in spec:
        try:
            backend = optuna.storages.RDBStorage(spec)
        except Exception as exc:  # SQLAlchemy's errors: bad URL, missing driver, no server
            raise ConfigError([("tune.storage", f"cannot open {spec}: {exc}")]) from None
        return Storage(spec, backend, None)
    path = Path(spec) if spec is not None else rundir.file(runs.TUNE_JOURNAL)
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    backend = JournalStorage(JournalFileBackend(os.fspath(path)))
    return Storage(os.fspath(path), backend, path.with_name(f"{path.name}.ask.lock"))
