"""What a cluster runs a Bento with (tasks/serving/cluster.py): manifests that Kubernetes' own models
accept whole, replicas and resources from params, and a Bento whose pins drift from requirements.lock
refused."""

from __future__ import annotations

import json

import pytest

from tasks.core.params import load, with_values
from tasks.serving.cluster import drift, manifests, secret
from tests.conftest import REPO

KINDS = {"Deployment": "V1Deployment", "Service": "V1Service", "Secret": "V1Secret"}


def loaded(doc: dict):
    """The manifest as the kubernetes client's model, and back: a key the schema lacks would be lost."""
    from kubernetes import client

    api = client.ApiClient()
    model = api.deserialize(json.dumps(doc), KINDS[doc["kind"]], "application/json")
    assert api.sanitize_for_serialization(model) == doc, "a key Kubernetes does not know"
    return model


def test_the_manifests_are_kubernetes_objects_with_the_params_values():
    params = with_values(
        load(REPO / "params.yaml"),
        {"package.cluster.replicas": 3, "package.cluster.cpu": "500m", "package.cluster.memory": "3Gi",
         "package.cluster.image": "registry.example.com/team/genloop"},
        "a test's values",
    )  # fmt: skip
    deployment, service = (loaded(d) for d in manifests(params, "genloop:0123abcd-99"))
    assert deployment.spec.replicas == 3
    (container,) = deployment.spec.template.spec.containers
    assert container.image == "registry.example.com/team/genloop:0123abcd-99"
    assert container.resources.requests == {"cpu": "500m", "memory": "3Gi"}
    assert "nvidia.com/gpu" not in container.resources.limits
    assert container.liveness_probe.http_get.path == "/livez"
    assert container.readiness_probe.http_get.path == "/readyz"
    assert deployment.spec.strategy.rolling_update.max_unavailable == 0  # every replica serves meanwhile
    key = next(e for e in container.env if e.name == "GENLOOP_API_KEY")
    assert (
        key.value_from.secret_key_ref.name == "genloop-secrets" and not key.value_from.secret_key_ref.optional
    )
    assert service.spec.selector == deployment.spec.selector.match_labels
    assert loaded(secret("k-1", "postgresql://db/site")).string_data == {
        "api-key": "k-1",
        "site-database": "postgresql://db/site",
    }

    gpu = with_values(params, {"package.gpu": True}, "a test's values")
    (container,) = loaded(manifests(gpu, "genloop:0123abcd-99")[0]).spec.template.spec.containers
    assert container.resources.limits["nvidia.com/gpu"] == "1"  # a quantity: a string


def test_a_misspelt_manifest_key_is_caught():
    (deployment, _) = manifests(load(REPO / "params.yaml"), "genloop:0123abcd-99")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(AssertionError, match="does not know"):
        loaded(deployment)


def test_a_bento_pinning_other_versions_than_the_lock_is_found(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("httpx==0.28.1\nPyYAML==6.0.4\ntorch==2.13.0\n")
    reqs = tmp_path / "bento/env/python/requirements.txt"
    reqs.parent.mkdir(parents=True)
    reqs.write_text("--index-url https://pypi.org/simple\n\nhttpx==0.29.0\npyyaml==6.0.4\ntriton==3.7.1\n")
    assert drift(tmp_path / "bento", lock) == {"httpx": ("0.29.0", "0.28.1")}  # triton: not in the lock
    reqs.write_text("httpx==0.28.1\npyyaml==6.0.4\n")
    assert drift(tmp_path / "bento", lock) == {}
