"""tune.space: dotted params keys, each a float or int range or a list of choices, checked against the
typed params (so a trial never samples a value that params.yaml would refuse) and sampled by Optuna."""

from __future__ import annotations

import difflib
import functools
import math
from pathlib import Path
from typing import Any

from pydantic import ValidationError, create_model

from tasks.core import paths

# what a trial may not choose: its own budget comes from tune.max_steps, and these say how train runs
FIXED = {
    "train.max_steps": "each trial's budget is tune.max_steps",
    "train.use_tuned": "it says whether train uses the tuned values",
    "train.init_from": "a path or a version, not a number to tune",
    **{
        f"train.{k}": "every trial runs on one device (trials spread over processes, not DDP ranks)"
        for k in ("devices", "num_nodes", "strategy")
    },
}


@functools.cache
def section_of(key: str):
    """The params model holding a tunable key (TrainParams, or a family's section), or None."""
    from models.families import FAMILIES
    from tasks.core.params import TrainParams, family_section

    parts = key.split(".")
    if len(parts) == 2 and parts[0] == "train":
        return TrainParams
    if len(parts) == 3 and parts[0] == "model" and parts[1] in FAMILIES:
        return family_section(FAMILIES[parts[1]])
    return None


@functools.cache
def _probe_model(section, name: str):
    """A one-field model with `section.name`'s type and bounds (built once: params load often)."""
    from tasks.core.params import Section

    field = section.model_fields[name]
    return create_model("Probe", __base__=Section, value=(field.annotation, field))


def _probe(section, name: str, value: Any) -> str | None:
    """Why the typed params would refuse `value` for `section.name`, or None."""
    try:
        _probe_model(section, name).model_validate({"value": value})
    except ValidationError as err:
        return "; ".join(e["msg"] for e in err.errors())
    return None


def check_space(space: dict) -> list[str]:
    """Every mistake in tune.space, one line each, naming the key."""
    mistakes = []
    for key, e in space.items():
        where = f"tune.space.{key}"
        section = section_of(key)
        if section is None:
            mistakes.append(f"{where}: only train.<key> and model.<family>.<key> can be tuned")
            continue
        name = key.rsplit(".", 1)[1]
        if name not in section.model_fields:
            close = difflib.get_close_matches(name, list(section.model_fields), n=1, cutoff=0.6)
            hint = f" (did you mean {key.rsplit('.', 1)[0]}.{close[0]}?)" if close else ""
            mistakes.append(f"{where}: unknown key{hint}")
            continue
        if key in FIXED:
            mistakes.append(f"{where}: cannot be tuned ({FIXED[key]})")
            continue
        if e.type == "categorical":
            if not isinstance(e.choices, list) or not e.choices:
                mistakes.append(f"{where}: choices must be a non-empty list (got {e.choices!r})")
                continue
            if any(v is not None for v in (e.low, e.high, e.step)) or e.log:
                mistakes.append(f"{where}: a categorical entry takes choices only (no low, high, step, log)")
            values = list(e.choices)
        else:
            if e.choices is not None:
                mistakes.append(f"{where}: choices belong to type categorical, not {e.type}")
            if e.low is None or e.high is None:
                mistakes.append(f"{where}: a {e.type} range needs low and high")
                continue
            if not e.low < e.high:
                mistakes.append(f"{where}: empty range (low {e.low} is not below high {e.high})")
                continue
            if e.log and e.low <= 0:
                mistakes.append(f"{where}: a log scale needs low > 0 (got {e.low})")
                continue
            if e.log and e.step is not None:
                mistakes.append(f"{where}: a log scale and a step cannot go together (Optuna)")
            if e.step is not None and e.step <= 0:
                mistakes.append(f"{where}: step must be > 0 (got {e.step})")
            if e.type == "int" and not all(float(v).is_integer() for v in (e.low, e.high, e.step or 1)):
                mistakes.append(f"{where}: an int range needs whole numbers (low, high, step)")
                continue
            values = [int(e.low), int(e.high)] if e.type == "int" else [e.low, e.high]
        for value in values:
            why = _probe(section, name, value)
            if why:
                mistakes.append(f"{where}: {value!r} would be refused as {key} ({why})")
                break
    return mistakes


def active(space: dict, family: str) -> dict:
    """The entries that apply to this family: train.* and model.<family>.*; other families' are ignored."""
    return {k: e for k, e in space.items() if k.startswith("train.") or k.startswith(f"model.{family}.")}


def suggest(trial, space: dict) -> dict[str, Any]:
    """One value per active entry, through Optuna's trial (TPE decides)."""
    values = {}
    for key, e in space.items():
        if e.type == "categorical":
            values[key] = trial.suggest_categorical(key, e.choices)
        elif e.type == "int":
            values[key] = trial.suggest_int(key, int(e.low), int(e.high), step=int(e.step or 1), log=e.log)
        else:
            values[key] = trial.suggest_float(key, e.low, e.high, step=e.step, log=e.log)
    return values


def within(space: dict, values: dict[str, Any]) -> dict[str, Any]:
    """The values that lie inside the space (what a champion's params can seed a study with)."""
    inside = {}
    for key, e in space.items():
        if key not in values:
            continue
        v = values[key]
        if e.type == "categorical":
            ok = v in e.choices
        else:
            ok = isinstance(v, int | float) and not isinstance(v, bool) and e.low <= v <= e.high
            ok = ok and math.isfinite(v) and (e.type != "int" or float(v).is_integer())
            if ok and e.step:  # on the grid the step draws
                ok = math.isclose((v - e.low) / e.step, round((v - e.low) / e.step), abs_tol=1e-9)
        if ok:
            inside[key] = v
    return inside


def read_tuned(path: Path = paths.TUNED) -> dict:
    """best_params.yaml: {study, trial, value, unit, params} ({params: {}} when nothing was tuned)."""
    from tasks.core.storage import parse_yaml

    if not path.is_file():
        return {"study": None, "params": {}}
    return parse_yaml(path.read_text()) or {"study": None, "params": {}}
