"""The study: its storage and name, the trial budget shared by every worker, and the trials themselves,
each a short run of the same `fit` that train uses, in its own folder.

Storage: a journal file on one machine (Optuna's JournalStorage, safe for several processes; SQLite is
not), or PostgreSQL for workers on many machines (RDBStorage with Optuna's heartbeat, so the trials of a
worker that died are failed by the others after tune.grace_s). A journal has no heartbeat: a trial left
RUNNING by a process of this machine that is gone is failed when a worker next claims a trial. Either
way, Optuna's RetryHeartbeatStaleTrialCallback queues it once more with the same params, and its folder's last
checkpoint resumes it.

Optuna's private API still used here, checked by tests/test_tune.py against the pinned version
(pyproject.toml): `optuna.storages._heartbeat.get_heartbeat_thread` (ask/tell has no public heartbeat),
`Study._storage`, `Trial._trial_id`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import socket
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.core import paths
from tasks.core.errors import GenloopError
from tasks.core.params import Params, line, with_values

TUNE = paths.ARTIFACTS / "tune"
# the journal and each trial's folder: working state kept between runs (a killed study resumes), not a
# result, so not a DVC output (another checkout takes the stage's results from the remote without it)
STUDY_DIR = paths.STATE / "tune" / "study"
JOURNAL = STUDY_DIR / "journal.log"
TRIALS_DIR = STUDY_DIR / "trials"
JOURNAL_GRACE_S = 5
# what every trial trains with, whatever params.yaml says (max_steps: tune.max_steps): one device, as
# trials spread over processes and machines rather than over DDP ranks
TRIAL_FIXED = {"max_steps": None, "devices": 1, "num_nodes": 1, "strategy": "auto"}


def retrying():
    """Optuna's own retry: a trial failed because its worker died is queued again once, with its params
    and user attributes (its folder, whose last checkpoint resumes it)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with _stable():
        return RetryHeartbeatStaleTrialCallback(max_retry=1)


@contextlib.contextmanager
def _stable() -> Iterator[None]:
    """Optuna marks its retry callback experimental (since 2.8); the pin in pyproject.toml holds it."""
    import warnings

    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def retry_of(trial) -> int | None:
    """The number of the trial this one runs again, or None."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    if not trial.system_attrs:
        return None
    with _stable():
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)


def open_storage(storage: str, heartbeat_s: int = 20, grace_s: int = 60):
    """The study's storage: `journal` (a file here) or a PostgreSQL URL, whose running trials send a
    heartbeat every heartbeat_s and are failed by the other workers after grace_s of silence."""
    import optuna

    if storage == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage

        STUDY_DIR.mkdir(parents=True, exist_ok=True)
        # An absolute path: Optuna's lock is a symlink to the journal, and a relative target dangles
        # from the link's folder, so the lock left by a worker killed while writing was never seen as
        # stale and the next worker spun forever. A write holds the lock for milliseconds: after
        # JOURNAL_GRACE_S a lock belongs to a dead worker and is released.
        path = str(JOURNAL.resolve())
        left = Path(path + ".lock")
        if left.is_symlink() and not left.exists():  # dangling: made with a relative path, stale
            left.unlink(missing_ok=True)
        lock = JournalFileSymlinkLock(path, grace_period=JOURNAL_GRACE_S)
        return JournalStorage(JournalFileBackend(path, lock_obj=lock))
    try:
        with _schema_lock(storage):
            return optuna.storages.RDBStorage(
                storage,
                heartbeat_interval=heartbeat_s,
                grace_period=grace_s,
                heartbeat_stale_trial_callback=retrying(),
                engine_kwargs={"pool_pre_ping": True},
            )
    except Exception as err:  # a wrong URL, a server down: say which, without the password
        raise GenloopError(f"tune.storage: cannot open {_redacted(storage)}: {err}") from None


SCHEMA_LOCK = zlib.crc32(b"genloop: the Optuna schema")  # an advisory lock's key, apart from the studies'


@contextlib.contextmanager
def _schema_lock(storage: str) -> Iterator[None]:
    """One process at a time opens the database: Optuna makes its tables on the first open, and two
    workers started at once on a new database both made them, one failing ("relation studies already
    exists"). A PostgreSQL advisory lock, held for the open alone."""
    if not storage.startswith("postgresql"):
        yield
        return
    with advisory_lock(storage, SCHEMA_LOCK):
        yield


def shown(storage: str) -> str:
    """The storage as reports show it: a URL without its password."""
    return storage if storage == "journal" else _redacted(storage)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "the URL given"


def data_digest(processed: Path = paths.PROCESSED) -> str:
    h = hashlib.sha256()
    for path in sorted(processed.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(processed).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def study_name(params: Params, processed: Path = paths.PROCESSED) -> str:
    """tune.study, or with `auto` the line and a fingerprint of what a trial's value depends on: the data,
    the params trials start from, their budget and the space. Changing any of them starts a new study;
    a rerun with the same continues the old one (and its budget)."""
    tune = params.require("tune")
    if tune.study != "auto":
        return tune.study
    model = params.require("model")
    # not what trials set themselves (their budget, one device) nor what only the final run uses
    train = params.require("train").model_dump(exclude=set(TRIAL_FIXED) | {"use_tuned"})
    blob = json.dumps(
        {
            "model": {"family": model.family, "config": model.family_config()},
            "train": train,
            "max_steps": tune.max_steps,
            "space": {k: v.model_dump() for k, v in space_of(params).items()},
            "data": data_digest(processed),
        },
        sort_keys=True,
    )
    return f"{line(params)}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def space_of(params: Params) -> dict:
    from tasks.core.space import active

    return active(params.require("tune").space, params.require("model").family)


def pruner(tune) -> Any:
    import optuna

    if tune.pruner == "median":
        chosen = optuna.pruners.MedianPruner(
            n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs
        )
    elif tune.pruner == "percentile":
        chosen = optuna.pruners.PercentilePruner(
            tune.percentile, n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs
        )
    elif tune.pruner == "hyperband":
        chosen = optuna.pruners.HyperbandPruner(min_resource=max(1, tune.warmup_epochs))
    else:
        return optuna.pruners.NopPruner()
    return optuna.pruners.PatientPruner(chosen, patience=tune.patience) if tune.patience else chosen


def sampler(tune, trials_so_far: int = 0):
    """TPE, seeded by tune.seed and the trial's place in the study: every worker (and every rerun) draws
    other values for the next trial than the last one did, and the same study gives the same draws."""
    import optuna

    return optuna.samplers.TPESampler(
        seed=tune.seed + trials_so_far, n_startup_trials=max(1, tune.startup_trials), constant_liar=True
    )


def open_study(params: Params, storage: Any = None, name: str | None = None):
    """Create the study or load it (several workers, or a rerun after a crash, share it)."""
    import optuna

    tune = params.require("tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage or open_storage(tune.storage, tune.heartbeat_s, tune.grace_s)
    return optuna.create_study(
        study_name=name or study_name(params),
        storage=storage,
        sampler=sampler(tune),
        pruner=pruner(tune),
        direction="minimize",
        load_if_exists=True,
    )


_ENGINES: dict[str, Any] = {}


def _engine(url: str):
    """One SQLAlchemy engine per database for the claim lock (Optuna's own engine is private)."""
    if url not in _ENGINES:
        from sqlalchemy import create_engine

        _ENGINES[url] = create_engine(url, pool_pre_ping=True)
    return _ENGINES[url]


@contextlib.contextmanager
def advisory_lock(storage: str, key: int) -> Iterator[None]:
    """A PostgreSQL advisory lock on the study's database, held on one connection while inside."""
    from sqlalchemy import text

    with _engine(storage).connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
            except Exception:  # not back to the pool still holding it: closing the session frees it
                conn.invalidate()


@contextlib.contextmanager
def claim_lock(study, storage: str) -> Iterator[None]:
    """One worker at a time counts the trials and starts the next: the budget is never exceeded."""
    if storage != "journal":
        with advisory_lock(storage, zlib.crc32(study.study_name.encode())):  # one per study
            yield
    else:
        from filelock import FileLock

        with FileLock(str(JOURNAL) + ".claim"):
            yield


def _owner() -> dict:
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": psutil.Process().create_time()}


def _alive(owner: dict) -> bool:
    import psutil

    if owner.get("host") != socket.gethostname():
        return True  # another machine's worker: not ours to judge (PostgreSQL's heartbeat is)
    try:
        return psutil.Process(owner["pid"]).create_time() == owner.get("pid_started")
    except (psutil.NoSuchProcess, KeyError):
        return False


def fail_dead(study, storage: str) -> list[int]:
    """Fail the RUNNING trials whose worker is gone, and queue them again; returns their numbers."""
    import optuna
    from optuna.trial import TrialState

    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if storage != "journal":  # by heartbeat; the storage's callback (retrying) queues the retries
        optuna.storages.fail_stale_trials(study)
        now = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        return sorted(running & now)
    failed = []
    for t in study.get_trials(states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("owner")
        if owner is None or _alive(owner):
            continue
        # the reason first (a finished trial takes no attributes); the retry is made from the copy read
        # before it, so it does not inherit the reason
        study._storage.set_trial_user_attr(t._trial_id, "reason", f"its worker (pid {owner['pid']}) died")
        if study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            failed.append(t.number)
            retrying()(study, t)
    return failed


def spent(trials) -> int:
    """Trials that count against tune.n_trials: every one started, except those cut short by a dead
    worker and queued again (their retry counts in their place)."""
    from optuna.trial import TrialState

    retried = {n for t in trials if (n := retry_of(t)) is not None}
    started = [t for t in trials if t.state != TrialState.WAITING]
    return len(started) - len(retried & {t.number for t in started if t.state == TrialState.FAIL})


def claim(study, params: Params):
    """The next trial of the budget, or None when the study has had its tune.n_trials."""
    tune = params.require("tune")
    with claim_lock(study, tune.storage):
        fail_dead(study, tune.storage)
        trials = study.get_trials(deepcopy=False)
        if spent(trials) >= tune.n_trials:
            return None
        study.sampler = sampler(tune, len(trials))
        trial = study.ask()
        if tune.storage != "journal":  # at once: a worker killed before its heartbeat thread starts
            study._storage.record_heartbeat(trial._trial_id)  # would leave it RUNNING for ever
        trial.set_user_attr("owner", _owner())
        if "folder" not in trial.user_attrs:  # a retry keeps the folder of the trial it retries
            trial.set_user_attr("folder", str(TRIALS_DIR / study.study_name / f"{trial.number:04d}"))
        return trial


def seed_first_trial(study, params: Params) -> None:
    """A new study starts with the served champion's values (or params.yaml's when there is none yet), so
    it never recommends worse than what is served."""
    from tasks.core.space import within

    with claim_lock(study, params.require("tune").storage):
        if study.get_trials(deepcopy=False):
            return
        values, source = champion_values(params)
        inside = within(space_of(params), values)
        if inside:
            study.enqueue_trial(inside, user_attrs={"source": source})


def flat(section: str, values: dict) -> dict[str, Any]:
    return {f"{section}.{k}": v for k, v in values.items()}


def champion_values(params: Params) -> tuple[dict[str, Any], str]:
    """The dotted params of the line's champion (its training record), or of params.yaml."""
    model = params.require("model")
    values = flat("train", params.require("train").model_dump()) | flat(
        f"model.{model.family}", model.family_config()
    )
    try:
        from tasks.core.storage import read_json
        from tasks.registry import champions, store

        tag = champions.champion(store.name_of(line(params)))
        record = read_json(store.resolve(tag) / paths.TRAINING_RECORD) if tag else None
    except Exception:  # no registry yet, or an old version without a record
        tag, record = None, None
    if not record:
        return values, "params.yaml"
    trained = record["params"]
    config = trained["model"].get(model.family) or {}
    return values | flat("train", trained["train"]) | flat(f"model.{model.family}", config), f"champion {tag}"


def trial_params(params: Params, values: dict[str, Any]) -> Params:
    """What a trial trains with: the sampled values over params.yaml, the trial's budget, one device
    (trials spread over processes and machines, not over DDP ranks)."""
    fixed = {f"train.{k}": v for k, v in TRIAL_FIXED.items()}
    fixed["train.max_steps"] = params.require("tune").max_steps
    return with_values(params, {**values, **fixed, "train.use_tuned": False}, "a trial's values")


def run_trial(study, trial, params: Params) -> None:
    """Train one trial and tell the study how it went: its value, pruned, or failed with the reason."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages._heartbeat import get_heartbeat_thread
    from optuna.trial import TrialState

    from tasks.core.space import suggest
    from tasks.training.fit import fit
    from tasks.tuning.pruning import TrialPruning

    start = time.perf_counter()
    pruning = TrialPruning(trial)
    state, value, reason = TrialState.FAIL, None, None
    folder = Path(trial.user_attrs["folder"])
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            values = suggest(trial, space_of(params))
            p = trial_params(params, values)
            metrics = fit(
                p.require("model"), p.require("train"), out=folder, live_metrics=False, progress=False,
                callbacks=[pruning], samples=False,
            )  # fmt: skip
            value = metrics.get("val_loss")
            trial.set_user_attr("resumed", bool(metrics.get("resumed")))  # from a dead worker's checkpoint
            if value is None or not math.isfinite(value):
                reason = f"validation loss is {value}"
            else:
                state = TrialState.COMPLETE
        except optuna.TrialPruned as pruned:
            state, reason = TrialState.PRUNED, str(pruned)
        except Exception as err:  # a failed trial is recorded with its reason, and the study goes on
            first = (str(err).strip().splitlines() or [""])[0]
            reason = f"{type(err).__name__}: {first}"
        seconds = time.perf_counter() - start
        try:
            trial.set_user_attr("epochs", pruning.epochs)
            trial.set_user_attr("device_seconds", round(seconds, 2))  # one device per trial
            if reason:
                trial.set_user_attr("reason", reason)
            study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
        except UpdateFinishedTrialError:  # PostgreSQL's heartbeat failed it meanwhile (a long pause)
            return
    # finished one way or another: its checkpoints are no longer needed (only a trial cut short by a
    # dead worker keeps its folder, to resume from), and DVC need not hash them
    shutil.rmtree(folder, ignore_errors=True)


def work(params: Params, name: str | None = None, progress: bool = False) -> int:
    """One worker: claim and run trials until the study has had tune.n_trials. Returns how many it ran."""
    import warnings

    study = open_study(params, name=name)
    seed_first_trial(study, params)
    # ask/tell keeps the budget exact across workers; run_trial runs the heartbeat optimize would
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    from optuna.trial import TrialState

    done = 0
    while True:
        trial = claim(study, params)
        if trial is None:  # the budget is spent; a trial still running may belong to a dead worker,
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # whose retry is ours
                break
            time.sleep(params.require("tune").heartbeat_s)
            continue
        run_trial(study, trial, params)
        done += 1
        if progress:
            last = study._storage.get_trial(trial._trial_id)
            shown = f"{last.value:.4g}" if last.value is not None else last.user_attrs.get("reason", "")
            print(f"trial {trial.number}: {last.state.name.lower()} {shown}", flush=True)
    return done
