"""deploy/k8s: the kustomize base and example overlay, rendered and checked offline.

``kubectl kustomize`` (kustomize built into kubectl, no cluster needed) renders the
base, the worker-group template and the example overlay. Every object is validated
strictly (unknown fields fail) against the Kubernetes OpenAPI schemas that
``kubernetes-validate`` ships, for the oldest and newest Kubernetes versions named
below; KEDA's objects, which those schemas do not know, are validated against the
pydantic models generated from KEDA's CRDs (``cloudcoil-models-keda``), with a round
trip that fails on any field the CRD does not have. Then the wiring: references
resolve, every variable is a real setting, every command is a real ``easel`` command,
the workers' models exist, and each ScaledObject's query, run against a migrated
PostgreSQL database, counts exactly its group's queued and running jobs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import psycopg
import pytest
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from sqlalchemy.engine import make_url

from easel.cli import main as easel_cli
from easel.migrations.upgrade import upgrade
from easel.shared.db import session_scope
from easel.shared.models import Job, JobStatus
from easel.shared.registry import load_registry
from easel.shared.settings import Settings
from tests.factories import job_row

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
EXAMPLE = K8S / "overlays" / "example"
SECRETS_EXAMPLE = EXAMPLE / "secrets.env.example"
SECRET_NAME = "easel-secrets"  # created in the cluster from secrets.env.example, never rendered
# The Kubernetes versions every object must validate against (oldest and newest supported).
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
KEDA_MODELS = {"ScaledObject": keda.ScaledObject, "TriggerAuthentication": keda.TriggerAuthentication}
WORKLOADS = {"Deployment", "Job"}
# Variables the pods get that are not Easel settings: the caches' home, and KEDA's copy of
# the database URL (in the Secret, so every container sees it).
OTHER_VARIABLES = {"HOME", "KEDA_POSTGRESQL_CONNECTION"}


def kubectl(*args: str) -> str:
    """Run kubectl offline; without it the test skips on a laptop and fails in CI."""
    if shutil.which("kubectl") is None:
        message = "kubectl (with its built-in kustomize) is needed to render deploy/k8s"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"kubectl {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def render(folder: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(kubectl("kustomize", str(folder))) if doc]


@pytest.fixture(scope="module")
def example() -> list[dict[str, Any]]:
    return render(EXAMPLE)


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def secret_keys() -> dict[str, str]:
    """The keys and placeholder values of secrets.env.example."""
    pairs = {}
    for line in SECRETS_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def base_name(obj: dict[str, Any]) -> str:
    """The name before kustomize's content hash (generated ConfigMaps only)."""
    name = obj["metadata"]["name"]
    return re.sub(r"-[a-z0-9]{10}$", "", name) if obj["kind"] == "ConfigMap" else name


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in WORKLOADS:
            for container in pod_spec(obj)["containers"]:
                yield f"{obj['kind']}/{obj['metadata']['name']}", container


def container_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """What the container's environment holds: its envFrom sources, then its env."""
    maps = of_kind(objects, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]]["data"])
        else:
            assert source["secretRef"]["name"] == SECRET_NAME, source
            env.update(secret_keys())
    env.update({item["name"]: item["value"] for item in container.get("env", [])})
    return env


def validate_keda(obj: dict[str, Any]) -> None:
    """Validate against KEDA's CRD models; the round trip drops (and so finds) unknown
    fields and changes (and so finds) values of the wrong type."""
    model = KEDA_MODELS[obj["kind"]].model_validate(obj)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == obj, (
        f"{obj['kind']}/{obj['metadata']['name']} has fields or values KEDA's CRD does not accept"
    )


def validate(obj: dict[str, Any]) -> None:
    if obj["apiVersion"].startswith("keda.sh/"):
        validate_keda(obj)
        return
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


# -- schemas -----------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["base", "worker-group", "overlays/example"])
def test_every_rendered_object_validates_against_its_schema(folder: str) -> None:
    objects = render(K8S / folder)
    assert objects
    errors = []
    for obj in objects:
        try:
            validate(obj)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message} ({exc.version})")
    assert not errors, f"{folder}:\n" + "\n".join(errors)


def test_the_validators_reject_a_typo_and_a_wrong_type(example: list[dict[str, Any]]) -> None:
    web = of_kind(example, "Deployment")["easel-web"]
    typo = {**web, "spec": {**web["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        validate(typo)
    scaled = next(iter(of_kind(example, "ScaledObject").values()))
    with pytest.raises(AssertionError, match="KEDA's CRD"):
        validate_keda({**scaled, "spec": {**scaled["spec"], "minReplicas": 0}})
    with pytest.raises(AssertionError, match="KEDA's CRD"):
        validate_keda({**scaled, "spec": {**scaled["spec"], "maxReplicaCount": "4"}})
    with pytest.raises(ValueError, match="triggers"):
        validate_keda({**scaled, "spec": {k: v for k, v in scaled["spec"].items() if k != "triggers"}})


def test_the_secret_made_as_the_docs_say_validates() -> None:
    out = kubectl(
        "create", "secret", "generic", SECRET_NAME, "--namespace=easel",
        f"--from-env-file={SECRETS_EXAMPLE}", "--dry-run=client", "--output=yaml",
    )  # fmt: skip
    secret = yaml.safe_load(out)
    validate(secret)
    assert set(secret["data"]) == set(secret_keys())


# -- what the example deploys -------------------------------------------------------------


def test_the_example_deploys_the_whole_stack(example: list[dict[str, Any]]) -> None:
    inventory = Counter((obj["kind"], base_name(obj)) for obj in example)
    assert inventory == Counter(
        {
            ("Namespace", "easel"): 1,
            ("ConfigMap", "easel-config"): 1,
            ("ConfigMap", "easel-models"): 1,
            ("Deployment", "easel-web"): 1,
            ("Service", "easel-web"): 1,
            ("PodDisruptionBudget", "easel-web"): 1,
            ("Deployment", "easel-webhooks"): 1,
            ("Job", "easel-migrate"): 1,
            ("TriggerAuthentication", "easel-keda-postgresql"): 1,
            ("PersistentVolumeClaim", "easel-weights"): 1,
            ("Deployment", "easel-worker-sd15"): 1,
            ("ScaledObject", "easel-worker-sd15"): 1,
            ("Deployment", "easel-worker-sdxl"): 1,
            ("ScaledObject", "easel-worker-sdxl"): 1,
        }
    )
    assert {obj["metadata"].get("namespace") for obj in example if obj["kind"] != "Namespace"} == {"easel"}
    commands = {name: c["command"] for name, c in containers(example)}
    assert commands == {
        "Deployment/easel-web": ["easel", "web"],
        "Deployment/easel-webhooks": ["easel", "webhooks"],
        "Job/easel-migrate": ["easel", "migrate"],
        "Deployment/easel-worker-sd15": ["easel", "worker"],
        "Deployment/easel-worker-sdxl": ["easel", "worker"],
    }


def test_every_reference_resolves(example: list[dict[str, Any]]) -> None:
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in example}
    needed: set[tuple[str, str]] = set()
    secret_refs: set[str] = set()
    for obj in example:
        if obj["kind"] in WORKLOADS:
            spec = pod_spec(obj)
            for volume in spec.get("volumes", []):
                if "configMap" in volume:
                    needed.add(("ConfigMap", volume["configMap"]["name"]))
                if "persistentVolumeClaim" in volume:
                    needed.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
            for container in spec["containers"]:
                mounted = {mount["name"] for mount in container.get("volumeMounts", [])}
                assert mounted <= {volume["name"] for volume in spec.get("volumes", [])}, container["name"]
                for source in container.get("envFrom", []):
                    if "configMapRef" in source:
                        needed.add(("ConfigMap", source["configMapRef"]["name"]))
                    else:
                        secret_refs.add(source["secretRef"]["name"])
        if obj["kind"] == "ScaledObject":
            needed.add(("Deployment", obj["spec"]["scaleTargetRef"]["name"]))
            for trigger in obj["spec"]["triggers"]:
                needed.add(("TriggerAuthentication", trigger["authenticationRef"]["name"]))
        if obj["kind"] == "TriggerAuthentication":
            for ref in obj["spec"]["secretTargetRef"]:
                secret_refs.add(ref["name"])
                assert ref["key"] in secret_keys(), f"{ref['key']} is not in {SECRETS_EXAMPLE.name}"
        if obj["kind"] in {"Service", "PodDisruptionBudget"}:
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            pods = [o for o in example if o["kind"] in WORKLOADS and matches(selector, o)]
            assert [o["metadata"]["name"] for o in pods] == ["easel-web"], obj["metadata"]["name"]
    assert needed <= names, f"referenced but not rendered: {sorted(needed - names)}"
    assert secret_refs == {SECRET_NAME}


def matches(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(key) == value for key, value in selector.items())


def test_pods_run_as_the_images_user_with_requests(example: list[dict[str, Any]]) -> None:
    for obj in example:
        if obj["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 1000  # the Dockerfile's useradd easel
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            if context.get("readOnlyRootFilesystem"):
                mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
                assert {"/data", "/tmp"} <= mounts, f"{obj['metadata']['name']}: nowhere to write"
                assert container_env(example, container)["HOME"] == "/data"
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])


def test_each_model_group_is_one_gpu_worker_deployment_scaled_to_zero_by_keda(
    example: list[dict[str, Any]],
) -> None:
    workers = {name: obj for name, obj in of_kind(example, "Deployment").items() if "-worker-" in name}
    scaled = of_kind(example, "ScaledObject")
    assert {obj["spec"]["scaleTargetRef"]["name"] for obj in scaled.values()} == set(workers)
    for name, obj in workers.items():
        assert "replicas" not in obj["spec"], f"{name}: KEDA owns the replica count"
        spec = pod_spec(obj)
        (container,) = spec["containers"]  # one process per pod, so one per GPU
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, name
        env = container_env(example, container)
        assert env["EASEL_DEVICE"] == "cuda"
        settings = settings_from(env)
        assert spec["terminationGracePeriodSeconds"] > settings.task_time_limit, (
            f"{name}: a batch may run {settings.task_time_limit} s; the grace period must let it finish"
        )
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
        assert port == settings.metrics_port
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    for name, obj in scaled.items():
        assert obj["spec"]["minReplicaCount"] == 0
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["type"] == "postgresql"
        assert float(trigger["metadata"]["targetQueryValue"]) > 0
        assert float(trigger["metadata"]["activationTargetQueryValue"]) == 0, name
    # No group's Deployment selects another group's pods.
    for name, obj in workers.items():
        selector = obj["spec"]["selector"]["matchLabels"]
        assert [n for n, other in workers.items() if matches(selector, other)] == [name]


# -- settings, commands and models ---------------------------------------------------------


def settings_from(env: dict[str, str]) -> Settings:
    """The Settings a container gets from ``env`` (and from nothing else)."""
    saved = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith("EASEL_")}
    try:
        os.environ.update({key: value for key, value in env.items() if key.startswith("EASEL_")})
        return Settings()
    finally:
        for key in [key for key in os.environ if key.startswith("EASEL_")]:
            del os.environ[key]
        os.environ.update(saved)


def test_every_variable_is_a_setting_and_every_command_parses(example: list[dict[str, Any]]) -> None:
    known = {f"EASEL_{name.upper()}" for name in Settings.model_fields}
    for where, container in containers(example):
        env = container_env(example, container)
        unknown = {key for key in env if key.startswith("EASEL_")} - known
        assert not unknown, f"{where}: no such setting: {sorted(unknown)}"
        assert set(env) - known <= OTHER_VARIABLES, where
        settings_from(env)  # every value parses
        program, name, *args = container["command"] + container.get("args", [])
        assert program == "easel"
        command = easel_cli.get_command(click.Context(easel_cli), name)
        assert command is not None, f"{where}: no `easel {name}` command"
        command.make_context(name, list(args))  # options parse, or this raises


def test_the_workers_serve_every_registered_model_between_them(
    example: list[dict[str, Any]], tmp_path: Path
) -> None:
    maps = of_kind(example, "ConfigMap").values()
    (models_map,) = (obj for obj in maps if base_name(obj) == "easel-models")
    (tmp_path / "models.toml").write_text(models_map["data"]["models.toml"])
    served: list[str] = []
    for name, container in containers(example):
        env = container_env(example, container)
        assert env["EASEL_MODELS_FILE"] == "/etc/easel/models.toml"
        registry = load_registry(settings_from({**env, "EASEL_MODELS_FILE": str(tmp_path / "models.toml")}))
        settings = settings_from(env)
        assert settings.default_model in registry.names(), name
        if name.startswith("Deployment/easel-worker-"):
            assert settings.served_models, f"{name}: a group names its models"
            assert set(settings.served_models) <= set(registry.names()), name
            assert set(settings.preload_list(registry.default)) <= set(settings.served_models), name
            served += settings.served_models
    assert sorted(served) == sorted(registry.names()), "each model is served by exactly one group"


# -- the KEDA trigger reads the truth ------------------------------------------------------


def libpq_url(database_url: str) -> str:
    """The form KEDA's postgresql scaler takes (pgx reads libpq URLs) of a SQLAlchemy URL."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False) + "?sslmode=disable"


def test_the_example_secret_points_keda_at_the_easel_database() -> None:
    keys = secret_keys()
    easel = make_url(keys["EASEL_DATABASE_URL"])
    keda_url = make_url(keys["KEDA_POSTGRESQL_CONNECTION"])
    assert easel.drivername == "postgresql+psycopg" and keda_url.drivername == "postgresql"
    assert (keda_url.host, keda_url.port, keda_url.database, keda_url.username) == (
        easel.host, easel.port, easel.database, easel.username,
    )  # fmt: skip


def test_each_scaled_object_counts_its_groups_queued_and_running_jobs(
    example: list[dict[str, Any]], fresh_postgres_url: str
) -> None:
    upgrade(fresh_postgres_url)
    scaled = of_kind(example, "ScaledObject")
    deployments = of_kind(example, "Deployment")
    groups = {}  # ScaledObject -> the models its target Deployment's workers serve
    for name, obj in scaled.items():
        target = deployments[obj["spec"]["scaleTargetRef"]["name"]]
        env = container_env(example, pod_spec(target)["containers"][0])
        groups[name] = (obj["spec"]["triggers"][0]["metadata"]["query"], settings_from(env).served_models)
    # One job of each (model, status) at a time: after each, every query's count must be
    # the number of jobs so far that its group's workers would run (queued or running).
    models = ("sd15", "dreamshaper", "sdxl", "other")
    pairs = [(model, status.value) for model in models for status in JobStatus]
    with psycopg.connect(libpq_url(fresh_postgres_url), autocommit=True) as conn:  # as the scaler connects
        for done, (model, status) in enumerate(pairs, start=1):
            with session_scope(fresh_postgres_url) as session:
                session.add(job(model, status))
            for name, (query, served) in groups.items():
                (count,) = conn.execute(query).fetchone()
                expected = sum(1 for m, s in pairs[:done] if m in served and s in ("queued", "running"))
                assert count == expected, (
                    f"{name} counted {count} after a {status} {model} job; its workers ({served}) "
                    f"have {expected} queued or running"
                )
    assert all(served for _, served in groups.values())


def job(model: str, status: str) -> Job:
    return job_row(model=model, status=status)
