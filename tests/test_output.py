"""What a user reads: a stage's output in a flow's log, and what `genloop flow` prints at the end (unit)."""

from __future__ import annotations

from types import SimpleNamespace

from genloop.report import lines
from tasks.core.orchestration import _said, shown
from tasks.lifecycle import lock_entries, summary, table


def bar(done: int, total: int = 600) -> str:
    return f"train, epoch 1/12:  {100 * done // total}%|##   | {done}/{total} [00:01<00:08, 67.79it/s]"


def test_a_progress_bar_is_a_line_now_and_then_and_dvcs_git_hints_none():
    now = [0.0]
    refreshes = [bar(n) for n in range(0, 601, 5)]  # a refresh every 0.1 s: 121 of them over 12 s
    dvc = ["", "To track the changes with git, run:", "", "\tgit add dvc.lock", "",
           "To enable auto staging, run:", "", "\tdvc config core.autostage true",
           "Use `dvc push` to send your updates to remote storage."]  # fmt: skip

    def source():
        yield "Running stage 'train':"
        for line in refreshes:
            now[0] += 0.1
            yield line
        yield "Updating lock file 'dvc.lock'"
        yield from dvc

    out = list(shown(source(), every_s=5.0, clock=lambda: now[0]))
    assert out[0] == "Running stage 'train':" and out[-1] == "Updating lock file 'dvc.lock'"
    bars = out[1:-1]
    assert bars[0] == refreshes[0] and bars[-1] == refreshes[-1]  # what it began and ended at
    assert len(bars) == 4, bars  # 0 s, 5 s, 10 s, and the last


def params(tune: bool = False, port: int = 3107) -> SimpleNamespace:
    return SimpleNamespace(tune=SimpleNamespace(enabled=tune), serve=SimpleNamespace(port=port, docs=True))


def test_the_lifecycle_summary_gives_each_stages_time_and_true_addresses(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.lock").write_text("stages:\n  collect: {a: 1}\n  tune: {b: 2}\n  train: {c: 3}\n")
    took = {"site: pull": 0.21, "collect": 3.04, "tune": 0.5, "train": 21.96, "lifecycle: summary": 0.1,
            "deploy (unless already served)": 8.0}  # fmt: skip
    served = {"bento": "genloop-digits-vae:abc", "action": "deployed", "url": "http://127.0.0.1:3107"}
    decision = {"decision": "promote", "reasons": ["beats the baseline"], "challenger": "v2"}
    before = lock_entries() | {"collect": "what it was", "tune": "what it was"}
    s = summary(before, decision, served, 0.0, took, tune_enabled=False)
    assert s["stages"] == {"collect": "ran", "tune": "off", "train": "unchanged"}  # not "tune ran"
    assert s["times"] == {"collect": 3.0, "tune": 0.5, "train": 22.0, "pull": 0.2, "deploy": 8.0}
    rows = table(s)
    assert rows[0].split() == ["pull", "0.2", "s"] and rows[2].split() == ["tune", "off", "0.5", "s"]
    assert rows[-2].split() == ["deploy", "deployed", "8.0", "s"] and rows[-1].startswith("  total")

    said = "\n".join(lines("lifecycle", s, params(port=3107)))
    assert "http://127.0.0.1:3107/ui" in said and ":3000" not in said  # the running service's address
    assert "artifacts/tune/report.html" not in said  # no study when tuning is off
    not_served = s | {"url": None, "deployed": None, "deploy": None}
    said = "\n".join(lines("lifecycle", not_served, params(port=3107)))
    assert "/ui" not in said and "genloop deploy" in said and "port 3107" in said


def test_a_stages_error_is_its_own_lines_not_dvcs_wrapping():
    tail = [
        "Running stage 'validate':", "> genloop stage validate", "error: not this one",
        "error: validation failed: 1 expectation(s) not met on 9 files",
        "  - labels: expected a, b; found new label(s) c",
        "the rejected batch is in artifacts/validate/rejected; data/raw holds the last validated batch again",
        "data docs: artifacts/validate/data_docs/index.html  (nothing downstream was written)",
        "ERROR: failed to reproduce 'validate': failed to run: genloop stage validate, exited with 1",
    ]  # fmt: skip
    assert _said(tail) == "\n".join([tail[3].removeprefix("error: "), *tail[4:7]])
    assert _said(["Traceback (most recent call last):", "KeyError: 'x'"]) is None  # a bug: DVC's tail
