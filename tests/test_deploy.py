"""Deployment files: Kubernetes manifests, Helm values, HPC scripts, the image; TLS on loopback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from ferritin.engine.cluster import WORKER_ENV

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S = DEPLOY / "kubernetes"
CRD_KINDS = {"DaskCluster", "DaskJob", "DaskWorkerGroup", "DaskAutoscaler"}


def _docs():
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "helm-values.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            out.append((path.name, doc))
    return out


def _pod_specs(doc):
    spec = doc["spec"]
    if doc["kind"] == "DaskCluster":
        yield "worker", spec["worker"]["spec"]
        yield "scheduler", spec["scheduler"]["spec"]
    elif doc["kind"] == "DaskWorkerGroup":
        yield "worker", spec["worker"]["spec"]
    elif doc["kind"] == "DaskJob":
        yield "job", spec["job"]["spec"]
        yield "worker", spec["cluster"]["spec"]["worker"]["spec"]
        yield "scheduler", spec["cluster"]["spec"]["scheduler"]["spec"]


def test_manifests_are_valid_operator_resources():
    docs = _docs()
    kinds = {d["kind"] for _, d in docs}
    assert CRD_KINDS <= kinds and "PersistentVolumeClaim" in kinds
    clusters = {d["metadata"]["name"] for _, d in docs if d["kind"] == "DaskCluster"}
    for name, d in docs:
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(d), name
        if d["kind"] in CRD_KINDS:
            assert d["apiVersion"] == "kubernetes.dask.org/v1", name
        if d["kind"] in ("DaskAutoscaler", "DaskWorkerGroup"):
            assert d["spec"]["cluster"] in clusters, f"{name}: refers to an unknown DaskCluster"
        if d["kind"] == "DaskAutoscaler":
            assert 1 <= d["spec"]["minimum"] <= d["spec"]["maximum"]


def test_every_container_is_sized_and_workers_are_single_threaded():
    for name, d in _docs():
        for role, pod in _pod_specs(d):
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                req, lim = c["resources"]["requests"], c["resources"]["limits"]
                assert {"cpu", "memory"} <= set(req) and {"cpu", "memory"} <= set(lim), f"{name} {role}"
                assert c["image"].startswith("ghcr.io/ferritin/ferritin"), name
                for m in c.get("volumeMounts", []):
                    assert m["name"] in volumes, f"{name} {role}: mounts undefined volume {m['name']}"
                if role == "worker":
                    args = c["args"]
                    assert args[:2] == ["dask", "worker"] and args[args.index("--nthreads") + 1] == "1", name
                    env = {e["name"]: e["value"] for e in c["env"]}
                    assert env.items() >= WORKER_ENV.items(), f"{name}: worker env lacks {WORKER_ENV.keys() - env.keys()}"
                if role == "job":
                    assert "ferritin run" in " ".join(c["args"]) and "DASK_SCHEDULER_ADDRESS" in " ".join(c["args"])
            for v in volumes.values():
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] == "ferritin-cohort"


CRDS = Path(__file__).resolve().parent / "data" / "dask-operator-crds"  # from the dask-kubernetes 2026.3.0 wheel
KUBERNETES_VERSION = "1.33.0"
ENVELOPE = ("apiVersion", "kind", "metadata")


def _no_unknown_fields(schema):
    """An OpenAPI schema that refuses fields it does not name, as ``kubectl apply --validate=strict`` does
    (the API server would otherwise drop a misspelt field silently)."""
    if isinstance(schema, dict):
        out = {k: _no_unknown_fields(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_no_unknown_fields(v) for v in schema]
    return schema


def _operator_schemas() -> dict:
    import gzip

    out = {}
    for path in sorted(CRDS.glob("*.yaml.gz")):
        crd = yaml.safe_load(gzip.decompress(path.read_bytes()))
        served = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        out[crd["spec"]["names"]["kind"]] = _no_unknown_fields(served["schema"]["openAPIV3Schema"])
    return out


def test_manifests_validate_against_the_kubernetes_and_dask_operator_schemas():
    """Every manifest against the schema the API server would apply: the Dask operator's CRDs for its
    resources (pod specs included), the Kubernetes OpenAPI schemas (strict) for built-in kinds."""
    jsonschema = pytest.importorskip("jsonschema")
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    schemas = _operator_schemas()
    assert set(schemas) == CRD_KINDS
    for name, doc in _docs():
        try:
            if doc["kind"] in CRD_KINDS:
                # the CRD's schema covers spec and status; the API server checks the envelope itself
                jsonschema.validate({k: v for k, v in doc.items() if k not in ENVELOPE}, schemas[doc["kind"]])
                _validate_as(doc["metadata"], "objectmeta-meta")
            else:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            raise AssertionError(f"{name}, {doc['kind']} {doc['metadata']['name']}: {exc}") from None


def test_schema_validation_catches_a_misspelt_field():
    jsonschema = pytest.importorskip("jsonschema")
    schemas = _operator_schemas()
    doc = next(d for _, d in _docs() if d["kind"] == "DaskCluster")
    container = doc["spec"]["worker"]["spec"]["containers"][0]
    bad = yaml.safe_load(yaml.safe_dump({"spec": doc["spec"]}))
    bad["spec"]["worker"]["spec"]["containers"][0] = {**container, "resource": container["resources"]}
    with pytest.raises(jsonschema.ValidationError, match="resource"):
        jsonschema.validate(bad, schemas["DaskCluster"])


def _validate_as(instance, definition: str) -> None:
    """``instance`` against a Kubernetes definition's strict JSON schema, as kubernetes-validate ships it."""
    import json
    from importlib import resources

    import jsonschema
    from referencing import Registry, Resource

    root = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local-strict"
    schema = json.loads((root / f"{definition}-v1.json").read_text())
    registry = Resource.from_contents(json.loads((root / "_definitions.json").read_text())) @ Registry()
    jsonschema.Draft202012Validator(schema, registry=registry).validate(instance)


def test_helm_values_hold_valid_kubernetes_objects():
    """The dask/dask chart's own values schema is not available offline; the Kubernetes objects its
    values carry (resources, env, volumes, mounts) are checked against the Kubernetes schemas."""
    pytest.importorskip("kubernetes_validate")
    values = yaml.safe_load((K8S / "helm-values.yaml").read_text())
    for role in ("scheduler", "worker"):
        _validate_as(values[role]["resources"], "resourcerequirements")
    for env in values["worker"]["env"]:
        _validate_as(env, "envvar")
    for volume in values["worker"]["mounts"]["volumes"]:
        _validate_as(volume, "volume")
    for mount in values["worker"]["mounts"]["volumeMounts"]:
        _validate_as(mount, "volumemount")


def test_helm_values_and_jobqueue_config_parse_with_the_expected_keys():
    values = yaml.safe_load((K8S / "helm-values.yaml").read_text())
    assert values["worker"]["threads_per_worker"] == 1 and "memory" in values["worker"]["resources"]["limits"]
    assert {e["name"]: e["value"] for e in values["worker"]["env"]}.items() >= WORKER_ENV.items()
    jq = yaml.safe_load((DEPLOY / "hpc" / "jobqueue.yaml").read_text())
    shipped = yaml.safe_load((DEPLOY.parent / "engine" / "ferritin.yaml").read_text())
    # the example only sets keys ferritin knows
    assert set(jq["ferritin"]["cluster"]) <= set(shipped["ferritin"]["cluster"])
    assert set(jq["ferritin"]["cluster"]["jobqueue"]) <= set(shipped["ferritin"]["cluster"]["jobqueue"])


@pytest.mark.parametrize("script", sorted((DEPLOY / "hpc").glob("*.sbatch")), ids=lambda p: p.name)
def test_batch_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert "#SBATCH" in script.read_text() and "ferritin run" in script.read_text()


def test_image_runs_every_role():
    text = (DEPLOY / "container" / "Dockerfile").read_text()
    assert "ENTRYPOINT" not in text.replace("No ENTRYPOINT", "")  # manifests run `dask ...` and `ferritin ...`
    for k, v in WORKER_ENV.items():
        assert f"{k}={v}" in text, k


def test_scheduler_file_script_starts_workers_with_the_worker_environment():
    text = (DEPLOY / "hpc" / "scheduler-file.sbatch").read_text()
    for k, v in WORKER_ENV.items():
        assert f"{k}={v}" in text, k


def test_tls_scheduler_and_worker_on_loopback():
    pytest.importorskip("cryptography")
    from distributed import LocalCluster
    from distributed.security import Security

    from ferritin.engine.cluster import dask_client

    sec = Security.temporary()  # self-signed CA and certificates, in memory
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls://", host="127.0.0.1",
                      security=sec, dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tls://127.0.0.1")
        with dask_client(cluster.scheduler_address, security=sec) as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
        # without credentials the scheduler does not talk
        # refused: a connection or TLS error, or distributed's TypeError for a missing TLS context
        with pytest.raises((OSError, TimeoutError, TypeError)):
            with dask_client(cluster.scheduler_address, security=Security()) as client:
                client.submit(sum, [1]).result(timeout=5)
