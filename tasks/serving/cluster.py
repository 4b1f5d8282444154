"""What a cluster runs a Bento with: its image recipe and Kubernetes manifests (`genloop package --cluster`).

- `Containerfile`: BentoML's own (what `bentoml containerize` builds), whose build context is the Bento's
  folder (`bentoml export`, or `bentoml get <tag> -o path`). Its Python packages are checked first: every
  one that requirements.lock pins has the lock's version, so the image runs what the tests ran.
- `kubernetes.yaml`: a Deployment (replicas and resources from package.cluster, a rolling update that
  keeps every replica serving, /livez and /readyz probes) and a Service in front of it.
- `secret.yaml`: the API key (and the site's database URL, when set) as a Secret the Deployment reads.
  It holds secrets: written with mode 0600, never by a DVC stage, and to be kept out of git.

The local deploy (`genloop deploy`) stays the default for one machine; this is for a team's cluster.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tasks.core.errors import GenloopError
from tasks.core.params import Params
from tasks.package import locked, pins_in

APP = "genloop"
SECRET = "genloop-secrets"
PORT = 3000  # what `bentoml serve` listens on in the image


def drift(bento_dir: Path, lock: Path = Path("requirements.lock")) -> dict[str, tuple[str, str]]:
    """The Bento's packages whose version differs from requirements.lock's: {name: (bento, lock)}."""
    pins = locked(lock)
    bento = pins_in((bento_dir / "env/python/requirements.txt").read_text())
    return {name: (v, pins[name]) for name, v in bento.items() if name in pins and pins[name] != v}


def manifests(params: Params, tag: str) -> list[dict]:
    """The Deployment and the Service of the Bento `tag`, whose image is package.cluster.image:<version>."""
    cluster = params.require("package").cluster
    version = tag.split(":", 1)[1]
    labels = {"app": APP}
    resources = {"cpu": cluster.cpu, "memory": cluster.memory}
    limits = {"memory": cluster.memory} | ({"nvidia.com/gpu": "1"} if params.require("package").gpu else {})
    probe = {"httpGet": {"path": "/livez", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3}
    container = {
        "name": APP,
        "image": f"{cluster.image}:{version}",
        "ports": [{"name": "http", "containerPort": PORT}],
        "env": [
            _from_secret("GENLOOP_API_KEY", "api-key", optional=False),  # beyond loopback: a key, always
            _from_secret("GENLOOP_SITE_DATABASE", "site-database", optional=True),  # one log, all replicas
        ],
        "resources": {"requests": resources, "limits": limits},
        "livenessProbe": probe,
        "readinessProbe": probe | {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "startupProbe": probe | {"periodSeconds": 5, "failureThreshold": 60},  # the model loads first
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "labels": labels | {"genloop/bento": version}},
        "spec": {
            "replicas": cluster.replicas,
            "selector": {"matchLabels": labels},
            # a new version starts beside the old one; a replica leaves only once its successor is ready
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels | {"genloop/bento": version}},
                "spec": {"containers": [container], "terminationGracePeriodSeconds": 60},  # drains
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": APP, "labels": labels},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    return [deployment, service]


def _from_secret(env: str, key: str, optional: bool) -> dict:
    return {"name": env, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": key, "optional": optional}}}


def secret(api_key: str, database: str | None) -> dict:
    data = {"api-key": api_key} | ({"site-database": database} if database else {})
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET},
        "type": "Opaque",
        "stringData": data,
    }


def write(params: Params, tag: str, out: Path) -> dict[str, str]:
    """Check the Bento's pins, then write the Containerfile, kubernetes.yaml and secret.yaml into `out`.
    The API key comes from GENLOOP_API_KEY (a served API beyond loopback needs one)."""
    import bentoml

    from tasks.core import site
    from tasks.registry import store

    key = os.environ.get("GENLOOP_API_KEY")
    if not key:
        raise GenloopError("set GENLOOP_API_KEY: a service in a cluster answers only requests that carry it")
    store.bentoml()
    bento_dir = Path(bentoml.get(tag).path)
    if wrong := drift(bento_dir):
        listed = ", ".join(f"{n} {b} (lock: {lo})" for n, (b, lo) in sorted(wrong.items()))
        raise GenloopError(f"{tag} pins other versions than requirements.lock: {listed}; package again")
    out.mkdir(parents=True, exist_ok=True)
    bentoml.container.get_containerfile(tag, output_path=str(out / "Containerfile"))
    (out / "kubernetes.yaml").write_text(yaml.safe_dump_all(manifests(params, tag), sort_keys=False))
    path = out / "secret.yaml"
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(yaml.safe_dump(secret(key, site.current().database), sort_keys=False))
    return {
        "containerfile": str(out / "Containerfile"),
        "kubernetes": str(out / "kubernetes.yaml"),
        "secret": str(path),
        "context": str(bento_dir),
    }
