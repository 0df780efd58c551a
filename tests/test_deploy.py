"""The deployment files under deploy/: the proxy configs agree with their renderer and the
proxies accept them; the Kubernetes manifests validate against the Kubernetes schemas
(kubernetes-validate, offline) and agree with each other (labels, names, metrics)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sst.benchmarks.replicas import install_proxy
from sst.server_config.proxy import NGINX_TEMP_DIRS, render_haproxy, render_nginx

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30"
EXAMPLE = [("10.0.0.11", 8001, 8003), ("10.0.0.12", 8001, 8003), ("10.0.0.13", 8001, 8003)]
HEADLESS = "sst-serve-headless.sst.svc.cluster.local"


def _body(path: Path) -> str:
    """The file without its leading comment block."""
    lines = path.read_text().splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


def _proxy(kind: str) -> str:
    try:
        return install_proxy(kind)
    except RuntimeError as exc:
        pytest.skip(f"no {kind} here and none could be installed: {exc}")


def _k8s_docs() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def test_the_proxy_configs_are_their_renderers_output() -> None:
    assert _body(DEPLOY / "nginx" / "nginx.conf") == render_nginx(EXAMPLE, "0.0.0.0:8001")
    assert _body(DEPLOY / "haproxy" / "haproxy.cfg") == render_haproxy(EXAMPLE, ":8001")
    proxy_map = _one(_k8s_docs(), "ConfigMap", "sst-proxy")
    assert proxy_map["data"]["haproxy.cfg"] == render_haproxy(
        None, ":8001", dns_name=HEADLESS, max_replicas=16, health_port=8003)


def test_the_configs_hash_the_session_header_consistently() -> None:
    nginx = render_nginx(EXAMPLE, "127.0.0.1:9000")
    assert "hash $http_sst_session consistent;" in nginx
    assert "grpc_pass grpc://sst_replicas;" in nginx
    assert "non_idempotent" not in nginx  # a sent call is never sent again
    haproxy = render_haproxy(EXAMPLE, ":9000")
    assert "balance hdr(sst-session)" in haproxy and "hash-type consistent" in haproxy
    assert "retry-on conn-failure" in haproxy and "option httpchk GET /ready" in haproxy


def test_bad_proxy_settings_are_named() -> None:
    with pytest.raises(ValueError, match="at least one replica"):
        render_nginx([], "127.0.0.1:1")
    with pytest.raises(ValueError, match="replica 'a b'"):
        render_nginx([("a b", 1, None)], "127.0.0.1:1")
    with pytest.raises(ValueError, match="DNS name"):
        render_haproxy(None, ":1")


@pytest.mark.slow
def test_nginx_accepts_its_config(tmp_path: Path) -> None:
    nginx = _proxy("nginx")
    for sub in NGINX_TEMP_DIRS:
        (tmp_path / f"{sub}_temp").mkdir()
    own = tmp_path / "nginx.conf"
    own.write_text(render_nginx(EXAMPLE, "127.0.0.1:9000", prefix=tmp_path))
    for conf in (own, DEPLOY / "nginx" / "nginx.conf"):
        res = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert "syntax is ok" in res.stderr


@pytest.mark.slow
def test_haproxy_accepts_its_configs(tmp_path: Path) -> None:
    haproxy = _proxy("haproxy")
    k8s = tmp_path / "k8s.cfg"
    k8s.write_text(_one(_k8s_docs(), "ConfigMap", "sst-proxy")["data"]["haproxy.cfg"])
    for conf in (DEPLOY / "haproxy" / "haproxy.cfg", k8s):
        res = subprocess.run([haproxy, "-c", "-f", str(conf)], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr


def test_every_manifest_validates_against_the_kubernetes_schemas() -> None:
    docs = _k8s_docs()
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Namespace",
                     "NetworkPolicy", "PodDisruptionBudget", "Service"]
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")


def test_a_manifest_error_is_caught() -> None:
    """The validator does reject a broken manifest (the check above can fail)."""
    doc = _one(_k8s_docs(), "HorizontalPodAutoscaler", "sst-serve")
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["metrics"][0]["pods"]["target"]["averageValue"] = {"eight": 8}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_manifests_agree_with_each_other() -> None:
    docs = _k8s_docs()
    serve = _one(docs, "Deployment", "sst-serve")
    pod = serve["spec"]["template"]
    labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    args = container["args"]
    assert args[0] == "serve"  # the image's entrypoint is sst (deploy/container)
    assert "--health-port=8003" in args and "--grpc-port=8001" in args
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/live"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    exit_timeout = int(next(a for a in args if a.startswith("--exit-timeout=")).split("=")[1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > exit_timeout
    for kind, name in (("Service", "sst-serve-headless"), ("PodDisruptionBudget", "sst-serve"),
                       ("NetworkPolicy", "sst-serve")):
        doc = _one(docs, kind, name)
        selector = doc["spec"].get("selector") or doc["spec"]["podSelector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), f"{kind}/{name} selects no replica"
    headless = _one(docs, "Service", "sst-serve-headless")
    assert headless["spec"]["clusterIP"] == "None"
    meta = headless["metadata"]
    assert HEADLESS.startswith(f"{meta['name']}.{meta['namespace']}.")
    proxy = _one(docs, "Deployment", "sst-proxy")
    proxy_labels = proxy["spec"]["template"]["metadata"]["labels"]
    allowed = _one(docs, "NetworkPolicy", "sst-serve")["spec"]["ingress"][0]["from"][0]
    assert allowed["podSelector"]["matchLabels"].items() <= proxy_labels.items()
    hpa = _one(docs, "HorizontalPodAutoscaler", "sst-serve")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "sst-serve"
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    rules = yaml.safe_load(_one(docs, "ConfigMap", "sst-prometheus-adapter")
                           ["data"]["config.yaml"])["rules"]
    served = {r["name"]["as"] for r in rules}
    assert wanted == served == {"sst_sessions_live", "sst_queue_seconds"}
    for rule in rules:
        assert set(rule) == {"seriesQuery", "resources", "name", "metricsQuery"}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]


def test_the_manifests_run_the_image_that_build_sh_builds() -> None:
    """Both containers of the replicas run build.sh's GPU image, by the name it prints;
    the init container runs that image's `sst export` into the models volume."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    build = (DEPLOY / "container" / "build.sh").read_text()
    assert 'tag="${tag:-sst-serve:${version}-${flavour}}"' in build
    pod = _one(_k8s_docs(), "Deployment", "sst-serve")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (serve,) = pod["containers"]
    assert init["image"] == serve["image"] == f"sst-serve:{version}-gpu"
    assert "sst export " in init["args"][0] and "--out /models/repo" in init["args"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    containerfile = (DEPLOY / "container" / "Containerfile").read_text()
    assert f'ARG SST_UID={pod["securityContext"]["runAsUser"]}' in containerfile
    assert 'ENTRYPOINT ["tini", "--", "sst"]' in containerfile
    ports = {p["containerPort"] for p in serve["ports"]}
    assert "EXPOSE " + " ".join(str(p) for p in sorted(ports)) in containerfile
