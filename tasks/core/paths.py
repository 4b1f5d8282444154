"""Where each stage reads and writes, relative to the project folder (the one holding params.yaml)."""

from pathlib import Path

DATA = Path("data")
RAW = DATA / "raw"
MANIFEST = RAW / "manifest.json"
# Project-local state outside data/ (see tasks/ingest/batches.py).
STATE = Path(".genloop")


def registry_home() -> Path:
    """The registry's folder (BentoML's store): BENTOML_HOME, else .genloop/bentoml in the project."""
    import os

    return Path(os.environ.get("BENTOML_HOME") or (STATE / "bentoml").resolve())


RAW_PENDING = STATE / "raw.pending"
RAW_PREVIOUS = STATE / "raw.previous"
QUARANTINE = STATE / "quarantine"  # a rejected batch holding secrets: its owner's eyes only
PROCESSED = DATA / "processed"
FEEDBACK = DATA / "feedback"  # highly rated samples drawn again (tasks/feedback.py)
LOW_RATED = Path("artifacts") / "feedback" / "low_rated.json"  # listed in the model card, never trained on

ARTIFACTS = Path("artifacts")
VALIDATE = ARTIFACTS / "validate"
VALIDATION_SUMMARY = VALIDATE / "summary.json"
DATA_DOCS = VALIDATE / "data_docs"
REJECTED = VALIDATE / "rejected"
# the tune stage's best values, what train applies with train.use_tuned
TUNED = ARTIFACTS / "tune" / "best_params.yaml"
# the exported model of the train stage, what evaluate registers, and the run's result
EXPORT = ARTIFACTS / "train" / "model"
TRAIN_METRICS = ARTIFACTS / "train" / "metrics.json"

# An exported model (artifacts/train/model, a registered version): weights, description, and the training
# run's own record of what it was trained with (params, commit, data, result)
TRAINING_RECORD = "training.json"
