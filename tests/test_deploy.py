"""Deployment files: Kubernetes manifests, Helm values, HPC scripts, the image; TLS on loopback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

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
                    assert env["OMP_NUM_THREADS"] == "1" and env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "1"
                if role == "job":
                    assert "ferritin run" in " ".join(c["args"]) and "DASK_SCHEDULER_ADDRESS" in " ".join(c["args"])
            for v in volumes.values():
                if "persistentVolumeClaim" in v:
                    assert v["persistentVolumeClaim"]["claimName"] == "ferritin-cohort"


def test_helm_values_and_jobqueue_config_parse_with_the_expected_keys():
    values = yaml.safe_load((K8S / "helm-values.yaml").read_text())
    assert values["worker"]["threads_per_worker"] == 1 and "memory" in values["worker"]["resources"]["limits"]
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
    for var in ("OMP_NUM_THREADS=1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1"):
        assert var in text


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
