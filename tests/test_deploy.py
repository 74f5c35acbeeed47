"""deploy/ as operators use it: the settings file lists every setting; the systemd units pass
``systemd-analyze verify``; the Kubernetes manifests validate offline against their schemas
(kubernetes-validate, and KEDA's CRD for the ScaledObject, compiled by the npm package
@kubernetes-models/keda, which .ci/run installs into ~/.cache/frontdesk/node); each runs real
frontdesk commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from frontdesk.engine.queue.base import GROUP
from frontdesk.settings import Settings

DEPLOY = Path(__file__).parents[1] / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
K8S = DEPLOY / "k8s"
KUBERNETES = "1.37.0"
NODE_MODULES = Path(
    os.environ.get("FRONTDESK_NODE_MODULES", Path.home() / ".cache/frontdesk/node/node_modules")
)


def manifests() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"]
            for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]  # fmt: skip


def real_command(args: list[str]) -> None:
    helped = subprocess.run(
        [sys.executable, "-m", "frontdesk.cli", *args, "--help"], capture_output=True, text=True
    )
    assert helped.returncode == 0, f"{args}: {helped.stderr}"


def test_the_env_example_names_every_setting_and_nothing_else() -> None:
    named = re.findall(r"^(?:# )?(FRONTDESK_[A-Z0-9_]+)=", (DEPLOY / "compose" / ".env.example")
                       .read_text(), re.MULTILINE)  # fmt: skip
    settings = [f"FRONTDESK_{name.upper()}" for name in Settings.model_fields]
    assert sorted(named) == sorted(settings)  # each once


def test_the_env_example_read_as_settings_gives_the_defaults() -> None:
    """Its uncommented lines are the tokens to fill in, empty: read as a .env file they leave
    every other setting at its default, so the file cannot set a wrong value by accident."""
    example = (DEPLOY / "compose" / ".env.example").read_text()
    values = dict(
        line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#")
    )
    assert values and all(value == "" for value in values.values())


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_the_systemd_unit_passes_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    """Verified with ExecStart pointed at this machine's frontdesk (verify checks that the
    command exists); any warning about a directive fails it too."""
    frontdesk = shutil.which("frontdesk", path=str(Path(sys.executable).parent))
    assert frontdesk is not None
    text = unit.read_text()
    [command] = re.findall(r"^ExecStart=/opt/frontdesk/bin/frontdesk (\S+)$", text, re.MULTILINE)
    here = tmp_path / unit.name.replace("@.", "@1.")
    here.write_text(text.replace("/opt/frontdesk/bin/frontdesk", frontdesk))
    verified = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(here)], capture_output=True, text=True
    )
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr
    helped = subprocess.run([frontdesk, command, "--help"], capture_output=True, text=True)
    assert helped.returncode == 0, helped.stderr  # a real frontdesk command
    for hardening in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes",
                      "Restart=on-failure", "Type=exec"):  # fmt: skip
        assert f"\n{hardening}\n" in text


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)


def test_the_kubernetes_manifests_validate_against_their_schemas() -> None:
    docs = manifests()
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == sorted(["ConfigMap", "Secret", "Job", "Deployment", "Service", "Ingress",
                            "HorizontalPodAutoscaler", "PodDisruptionBudget", "Deployment",
                            "PodDisruptionBudget", "ScaledObject"])  # fmt: skip
    for doc in docs:
        if doc["kind"] != "ScaledObject":  # KEDA's: the next test
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    misspelt = json.loads(json.dumps(deployment).replace('"replicas"', '"replica"'))
    with pytest.raises(kubernetes_validate.ValidationError):  # the check can fail
        kubernetes_validate.validate(misspelt, KUBERNETES, strict=True)

    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec")
        if pod is None:
            continue
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            real_command(container["args"])
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", ())}
            if doc["kind"] == "Deployment":  # probed on the metrics port, as served
                assert ports["metrics"] == int(config["FRONTDESK_METRICS_PORT"])
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    worker = next(
        d for d in docs if d["kind"] == "Deployment" and "worker" in d["metadata"]["name"]
    )
    [container] = worker["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget"):
        assert any(d["kind"] == kind for d in docs)


def test_the_keda_scaledobject_validates_against_kedas_crd_and_scales_on_the_lag(
    tmp_path: Path,
) -> None:
    assert (NODE_MODULES / "@kubernetes-models" / "keda").is_dir(), (
        f"KEDA's schema is not installed in {NODE_MODULES}: run "
        "npm install --prefix ~/.cache/frontdesk/node @kubernetes-models/keda@2 (as .ci/run does)"
    )
    [scaled] = [d for d in manifests() if d["kind"] == "ScaledObject"]
    good = tmp_path / "scaled.json"
    good.write_text(json.dumps(scaled))
    broken = tmp_path / "broken.json"  # the check can fail: the replica counts as words
    broken.write_text(json.dumps({**scaled, "spec": {**scaled["spec"], "minReplicaCount": "one"}}))
    script = Path(__file__).parent / "k8s" / "validate_keda.mjs"
    env = {**os.environ, "FRONTDESK_NODE_MODULES": str(NODE_MODULES)}
    checked = subprocess.run(["node", str(script), str(good)], capture_output=True, text=True,
                             env=env)  # fmt: skip
    assert checked.returncode == 0 and checked.stdout.strip() == "ok", (
        checked.stdout + checked.stderr
    )
    refused = subprocess.run(["node", str(script), str(broken)], capture_output=True, text=True,
                             env=env)  # fmt: skip
    assert refused.returncode == 1 and "minReplicaCount" in refused.stdout

    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis-streams"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == GROUP
    assert meta["stream"] == f"{Settings.model_fields['queue_prefix'].default}:turns"
    assert int(meta["lagCount"]) > 0 and scaled["spec"]["minReplicaCount"] >= 1
    assert scaled["spec"]["scaleTargetRef"]["name"] == "frontdesk-worker"
