"""Lifecycle stages: one module per stage, each with a plain `run(params)` and its Prefect task."""

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
