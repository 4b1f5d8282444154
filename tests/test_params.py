import pytest

from tasks.core.errors import GenloopError
from tasks.core.params import load, parse


def test_default_params_file_loads(project):
    params = load()
    assert params.data.source == "sklearn:digits"
    assert params.validate_.image.height == "auto"
    assert params.augment.image.factor >= 0


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"trian": {}}, "trian: unknown key"),
        ({"augment": {"seeed": 1}}, "augment.seeed: unknown key"),
        ({"augment": {"image": {"factor": "2"}}}, "augment.image.factor"),
        ({"augment": {"val_fraction": 1.5}}, "augment.val_fraction"),
        ({"collect": {"workers": 0}}, "collect.workers"),
        ({"data": {"source": "sklearn:mnist"}}, "data.source"),
        ({"data": {"source": "http://example.invalid/x"}}, "data.source"),
        ({"data": {"source": "s3:///prefix"}}, "data.source"),
        ({"validate": {"text": {"charset": "latin"}}}, "validate.text.charset"),
    ],
)
def test_bad_keys_are_named(raw, named):
    with pytest.raises(GenloopError, match=r"invalid parameters") as err:
        parse(raw)
    assert named in str(err.value)


def test_integers_allowed_where_floats_expected():
    assert parse({"collect": {"timeout_s": 3}}).collect.timeout_s == 3.0


def test_cli_reports_bad_params_without_traceback(project):
    project.set_params(augment={"seed": "not-a-number"})
    proc = project.run("genloop", "stage", "collect")
    assert proc.returncode == 1
    assert "augment.seed" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_unknown_stage_is_a_usage_error(project):
    proc = project.run("genloop", "stage", "nope")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_cli_help_everywhere(project):
    for args in (["--help"], ["stage", "--help"], ["flow", "--help"]):
        proc = project.run("genloop", *args)
        assert proc.returncode == 0, proc.stderr
        assert "Usage" in proc.stdout
