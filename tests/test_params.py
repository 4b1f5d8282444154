import pytest

from tasks.core.errors import GenloopError
from tasks.core.params import load, parse
from tests.conftest import REPO

REPO_PRESETS = REPO / "presets"


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
        ({"model": {"family": "gan", "gan": {"diff_augment": ["flip"]}}}, "model.gan.diff_augment.0"),
        ({"model": {"family": "vae", "vae": {"channels": [32, 0]}}}, "model.vae.channels.1"),
        ({"model": {"family": "vae", "vae": {"hidden": [-5]}}}, "model.vae.hidden.0"),
        ({"model": {"family": "vae", "vae": {"channels": []}}}, "model.vae.channels"),
        (
            {"model": {"family": "vae", "vae": {"latent_dim": "big"}}},
            "model.vae.latent_dim: Input should be a valid integer, or auto",
        ),
        ({"model": {"family": "auto!"}}, "model.family"),
        ({"site": {"remote": "team-bucket/genloop"}}, "site.remote"),
        ({"site": {"database": "mysql://db/genloop"}}, "site.database"),
        ({"site": {"remot": "s3://b/p"}}, "site.remot: unknown key (did you mean remote?)"),
    ],
)
def test_bad_keys_are_named(raw, named):
    with pytest.raises(GenloopError, match=r"invalid parameters") as err:
        parse(raw)
    assert named in str(err.value)


def test_integers_allowed_where_floats_expected():
    import yaml

    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["collect"]["timeout_s"] = 3
    assert parse(raw).collect.timeout_s == 3.0


def test_every_value_comes_from_the_file():
    """No section has defaults in code: a file without one is refused, naming what is missing."""
    with pytest.raises(GenloopError) as err:
        parse({"data": {"source": "sklearn:digits"}})
    assert {"  collect: missing", "  validate: missing", "  augment: missing"} <= set(
        str(err.value).splitlines()
    )


def test_cli_reports_bad_params_without_traceback(project):
    project.set_params(augment={"seed": "not-a-number"})
    proc = project.run("genloop", "stage", "collect")
    assert proc.returncode == 1
    assert "augment.seed" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_flow_with_bad_params_stops_before_prefect_starts(project):
    """One clean error, in about a second: no temporary Prefect server, no flow run, no traceback."""
    project.set_params(collect={"sourcee": "x"})
    proc = project.run("genloop", "flow", "data")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "error: invalid parameters in params.yaml:",
        "  collect.sourcee: unknown key (valid: workers, retries, timeout_s)",
    ]
    assert "prefect" not in proc.stdout.lower()


def test_prefects_report_of_a_user_error_is_dropped_and_any_other_kept():
    """A GenloopError is told by the run's state and the command's `error:` line, without traceback;
    a bug keeps its traceback."""
    import logging
    import sys

    from tasks.core.orchestration import _UserErrors

    def record(err: Exception) -> logging.LogRecord:
        try:
            raise err
        except Exception:
            info = sys.exc_info()
            return logging.LogRecord("prefect.task_runs", logging.ERROR, "", 0, "failed", None, info)

    assert not _UserErrors().filter(record(GenloopError("bad batch")))
    assert _UserErrors().filter(record(KeyError("bug")))


def test_cli_unknown_stage_is_a_usage_error(project):
    proc = project.run("genloop", "stage", "nope")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_cli_help_everywhere(project):
    for args in (["--help"], ["stage", "--help"], ["flow", "--help"]):
        proc = project.run("genloop", *args)
        assert proc.returncode == 0, proc.stderr
        assert "Usage" in proc.stdout


def test_a_misspelt_key_is_one_line_with_the_key_meant(project):
    import yaml

    raw = yaml.safe_load((project.root / "params.yaml").read_text())
    raw["train"]["max_step"] = raw["train"].pop("max_steps")
    raw["model"]["vae"]["latnt_dim"] = raw["model"]["vae"].pop("latent_dim")
    with pytest.raises(GenloopError) as err:
        parse(raw)
    assert sorted(str(err.value).splitlines()[1:]) == [
        "  model.vae.latnt_dim: unknown key (did you mean latent_dim?)",
        "  train.max_step: unknown key (did you mean max_steps?)",
    ]


def test_family_sections_come_from_the_registry():
    """model.<family> keys and bounds are the family's Config (models/families.py), checked at load."""
    with pytest.raises(GenloopError, match=r"model.gpt.position: Input should be 'learned' or 'rope'"):
        parse({"model": {"family": "gpt", "gpt": {"position": "alibi"}}})
    with pytest.raises(
        GenloopError, match=r"model.vae.latent_dim: Input should be greater than or equal to 1"
    ):
        parse({"model": {"family": "vae", "vae": {"latent_dim": 0}}})
    with pytest.raises(GenloopError, match=r"model.family: unknown model family 'diffusion' \(choose from"):
        parse({"model": {"family": "diffusion"}})


def test_cli_version_is_the_package_version(project):
    from importlib.metadata import version

    proc = project.run("genloop", "--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"genloop {version('genloop')}"


@pytest.mark.parametrize("bad", ["Digits", "-digits", "digits-", "a" * 56, "my line"])
def test_a_line_name_must_make_a_registry_name(bad):
    """genloop-<line> is a BentoML tag: lowercase, 63 characters at most, a letter or digit at each end."""
    import yaml

    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["name"] = bad
    with pytest.raises(GenloopError, match=r"model\.name"):
        parse(raw)


@pytest.mark.parametrize(
    "source", ["sklearn:digits", "/data/" + "very-long-folder-name_" * 6 + "/", "s3://b/Shapes Set!/"]
)
def test_auto_line_names_are_valid_registry_names(source):
    from bentoml._internal.tag import Tag

    from tasks.core.datasets import line_of

    for family in ("vae", "gan", "gpt"):
        line = line_of(source, family)
        assert Tag.from_taglike(f"genloop-{line}:v1").name == f"genloop-{line}"  # BentoML accepts it
        assert parse_name(line) == line


def parse_name(line: str) -> str:
    """The line as model.name in params.yaml: valid there too."""
    import yaml

    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["name"] = line
    return parse(raw).model.name


@pytest.mark.parametrize("preset", sorted((REPO_PRESETS).glob("*.yaml")), ids=lambda p: p.name)
def test_a_preset_is_a_whole_params_file(preset):
    """A preset is copied over params.yaml and run with dvc repro: every section must be there."""
    import yaml

    from tests.conftest import REPO

    sections = set(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert set(yaml.safe_load(preset.read_text())) == sections
    parsed = load(preset)
    assert all(getattr(parsed, s if s != "validate" else "validate_") is not None for s in sections)


def test_a_password_in_the_site_is_refused_and_never_shown(project, monkeypatch):
    """Credentials come from the environment: a URL with a password is refused, the message names the
    variable to use, and neither the error nor `genloop status` prints the password."""
    from tasks.core import site

    with pytest.raises(GenloopError, match="PGPASSWORD") as err:
        parse({"site": {"database": "postgresql://genloop:hunter2@db:5432/genloop"}})
    assert "hunter2" not in str(err.value) and "genloop:***@db:5432" in str(err.value)
    monkeypatch.setenv("GENLOOP_SITE_DATABASE", "postgresql://genloop:hunter2@db/genloop")
    with pytest.raises(GenloopError, match="PGPASSWORD") as err:
        site.current()
    assert "hunter2" not in str(err.value)
    for url in (
        "postgresql://genloop:hunter2@db/x",
        "postgresql://genloop@db/x?sslmode=require&password=hunter2",
    ):
        out = project.run("genloop", "status", env={"GENLOOP_SITE_DATABASE": url})
        assert out.returncode == 0 and "hunter2" not in out.stdout + out.stderr, out.stderr
        assert "site.database" in out.stdout and "model versions" in out.stdout.lower()  # the rest shown


def test_status_names_the_stores_here_and_with_a_site(project):
    out = project.run("genloop", "status", check=True).stdout
    assert "this machine only" in out and ".dvc/cache" in out and "genloop-aliases.json" in out
    database = "postgresql://genloop@127.0.0.1:9/g"  # nothing listens there: named, the rest shown
    project.set_params(site={"remote": "s3://team/genloop", "database": database})
    out = project.run("genloop", "status", check=True).stdout
    assert "s3://team/genloop/dvc" in out and "s3://team/genloop/registry" in out
    assert f"champion record          {database}" in out
    assert f"cannot use the database of site.database ({database})" in out


def test_family_auto_follows_the_kind_of_data(tmp_path, monkeypatch):
    """`model.family: auto` (the default) trains the GPT on text, the VAE on images up to 8x8 and the GAN
    on larger ones, read from the source's files or from what was collected; an explicit family wins;
    the line keeps its name."""
    import numpy as np

    from tasks.core.params import family_was_auto, line, load, with_values
    from tests.conftest import write_png

    monkeypatch.chdir(tmp_path)  # nothing collected here
    p = load(REPO / "params.yaml")
    assert p.model.family == "vae" and family_was_auto(p.model) and line(p) == "sklearn-digits-vae"
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts/a.txt").write_text("some text")
    write_png(tmp_path / "pictures/cat/a.png", np.zeros((8, 8, 3), np.uint8))
    write_png(tmp_path / "photos/cat/a.png", np.zeros((16, 8, 3), np.uint8))
    (tmp_path / "broken/cat").mkdir(parents=True)
    (tmp_path / "broken/cat/a.png").write_bytes(b"not a png")
    for source, family in [
        ("pydoc:topics", "gpt"),
        (str(tmp_path / "texts"), "gpt"),
        (str(tmp_path / "pictures"), "vae"),
        (str(tmp_path / "photos"), "gan"),  # larger than 8x8
        (str(tmp_path / "broken"), "gan"),  # size unknown: validate says what is wrong
        (str(tmp_path / "missing"), "gan"),  # collect then says the folder is missing
    ]:
        chosen = with_values(p, {"data.source": source})
        assert chosen.model.family == family and family_was_auto(chosen.model), source
    # S3: unknown before its first collect (the GAN), then read from what collect fetched
    assert with_values(p, {"data.source": "s3://bucket/thumbs"}).model.family == "gan"
    write_png(tmp_path / "data/raw/files/cat/a.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "data/raw/manifest.json").write_text('{"source": "s3://bucket/thumbs", "kind": "image"}')
    assert with_values(p, {"data.source": "s3://bucket/thumbs"}).model.family == "vae"
    # what another source collected is no answer for a local folder: its own first image is
    assert with_values(p, {"data.source": str(tmp_path / "photos")}).model.family == "gan"
    text = with_values(p, {"data.source": "pydoc:topics"})
    assert text.train.max_steps == 4800 and text.train.batch_size == 32  # the GPT's own settings apply
    explicit = with_values(p, {"model.family": "gan"})
    assert explicit.model.family == "gan" and not family_was_auto(explicit.model)
    bad = {"model.vae.latent_dim": 0, "model.vae.channels": [], "train.max_steps": "long"}
    for key, value in bad.items():
        with pytest.raises(GenloopError) as err:
            with_values(p, {key: value})
        (said,) = str(err.value).splitlines()[1:]  # one line, naming the key and that auto is allowed
        assert said.startswith(f"  {key}: ") and ", or auto (got" in said, said
