"""Lifecycle stages, one module each, with a plain `run(params)` and its Prefect task.

DVC stages (dvc.yaml): collect, validate, augment, train, evaluate, package (tune joins them).
Acting on the world (Prefect tasks and CLI commands, not DVC stages): deploy (monitor and retrain join it).
The pieces they share live in the subpackages: core (params, paths, storage, errors, the Prefect-DVC
bridge), ingest (sources, raw batches), training, quality (metrics, baselines, the gate), registry,
serving.
"""

import os

# No telemetry from anything genloop starts (CLI, DVC stages, Prefect workers, services), unless the
# user opted in explicitly in the environment.
for _key, _value in {
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "BENTOML_DO_NOT_TRACK": "true",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_key, _value)
