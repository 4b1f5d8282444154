"""Where a team's shared state lives: the `site` section of params.yaml.

- `site.remote` (`s3://bucket/prefix`): the DVC remote (`<prefix>/dvc`), the registry's exported
  versions and Bentos (`<prefix>/registry`) and each model line's last dvc.lock (`<prefix>/pipelines`),
  reached with boto3's standard settings (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
- `site.database` (`postgresql://user@host:port/db`): the champion record and the service's log; the
  password from libpq's own PGPASSWORD or ~/.pgpass, never from params.yaml.

Empty means this machine only (local files, nothing to configure). The site says where state lives, not
what a stage computes: no DVC stage depends on it, and moving to a shared store reruns nothing. A process
started from a Bento (the service) has no params.yaml: GENLOOP_SITE_REMOTE and GENLOOP_SITE_DATABASE
carry the setting to it, and win over params.yaml when set.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tasks.core.errors import GenloopError

ENV = {"remote": "GENLOOP_SITE_REMOTE", "database": "GENLOOP_SITE_DATABASE"}
CONNECT_TIMEOUT_S = 10  # a database that cannot be reached fails the command within this


@dataclass(frozen=True)
class Site:
    remote: str | None = None
    database: str | None = None

    def variables(self) -> dict[str, str]:
        """The environment that carries this site to a process without params.yaml (the service)."""
        return {ENV[k]: v for k, v in (("remote", self.remote), ("database", self.database)) if v}


def current(params_file: str | Path = "params.yaml") -> Site:
    """The site in effect here: the environment's GENLOOP_SITE_* first, else params.yaml's `site`
    (validated as the rest of params.yaml is), else this machine only."""
    from tasks.core.params import SiteParams

    values: dict[str, str | None] = {}
    path = Path(params_file)
    if path.is_file():
        from tasks.core.storage import parse_yaml

        raw = parse_yaml(path.read_text()) or {}
        section = raw.get("site") if isinstance(raw, dict) else None
        if isinstance(section, dict):
            values.update(section)
    for key, var in ENV.items():
        if var in os.environ:
            values[key] = os.environ[var]
    try:
        checked = SiteParams.model_validate(values)
    except Exception as err:  # pydantic's ValidationError: say it as params.yaml's own check does
        from tasks.core.params import _describe

        raise GenloopError(f"invalid site settings:\n{_describe(err, prefix=('site',))}") from None
    return Site(checked.remote, checked.database)


def redact(url: str | None) -> str:
    """A store's URL fit to print: any password (in the address or a password= parameter) as ***."""
    if not url:
        return ""
    import re

    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        parts = parts._replace(netloc=f"{parts.username}:***@{host}")
    query = re.sub(r"((?:^|&)(?:ssl)?password=)[^&]*", r"\1***", parts.query)
    return urlunsplit(parts._replace(query=query))


def stores(site: Site | None = None) -> list[tuple[str, str]]:
    """Each store this checkout uses and where it is: what `genloop status` shows."""
    site = site or current()
    from tasks.core.paths import registry_home

    home = registry_home()
    database = redact(site.database)
    return [
        ("data and stage outputs", join(site.remote, "dvc") if site.remote else ".dvc/cache"),
        ("registry and Bentos", join(site.remote, "registry") if site.remote else str(home)),
        ("champion record", database or str(home / "genloop-aliases.json")),
        ("service log and ratings", database or "serving.db of each deployment"),
    ]


def join(remote: str, *parts: str) -> str:
    """`remote` (s3://bucket/prefix) with path parts added."""
    return "/".join([remote.rstrip("/"), *(p.strip("/") for p in parts)])


def engine(url: str | None = None):
    """An SQLAlchemy engine for `url` (default: site.database), one per URL in a process; psycopg (3) is
    the driver, and libpq reads the password from PGPASSWORD or ~/.pgpass."""
    url = url or current().database
    if not url:
        raise GenloopError("no site.database is set")
    return _engine(url)


@functools.cache
def _engine(url: str):
    from sqlalchemy import create_engine

    driver = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return create_engine(
        driver,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=4,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "genloop"},
    )


def unreachable(url: str, err: Exception) -> GenloopError:
    """The error for a database that refused or could not be reached, naming the setting and the store."""
    reason = " ".join(str(getattr(err, "orig", None) or err).split())
    return GenloopError(f"cannot use the database of site.database ({redact(url)}): {reason}")
