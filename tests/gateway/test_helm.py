"""The Helm chart, rendered offline: lint, Kubernetes schemas, refused values, and a ConfigMap the gateway loads."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
from kubernetes_validate import validate
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

from gateway.config import load_config
from tests.gateway.chart import CHART, OVERLAYS, find, one, overlay, pod_spec, render

K8S_VERSION = latest_version()  # the newest Kubernetes whose schemas kubernetes-validate ships
# Custom resources: no schema in Kubernetes' own; their API versions are checked instead.
CRD_VERSIONS = {"ScaledObject": "keda.sh/v1alpha1", "ServiceMonitor": "monitoring.coreos.com/v1",
                "PrometheusRule": "monitoring.coreos.com/v1"}
CASES = [None, *OVERLAYS]
IDS = ["default", *(p.stem for p in OVERLAYS)]


def test_lint_is_clean() -> None:
    for values in CASES:
        report = helm.lint(CHART, overlay(values), strict=True, kube_version=f"v{K8S_VERSION}")
        problems = [m for m in report["messages"] if m["severity"] >= 2]  # 1 is info ("icon is recommended")
        assert report["errors"] == [] and problems == [], (values, report)


@pytest.mark.parametrize("values", CASES, ids=IDS)
def test_every_manifest_validates_against_kubernetes(values: Path | None) -> None:
    docs = render(overlay(values))
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_VERSIONS:
            assert doc["apiVersion"] == CRD_VERSIONS[doc["kind"]]
            continue
        try:
            validate(doc, K8S_VERSION, strict=True)
        except SchemaNotFoundError:
            pytest.fail(f"{doc['kind']} {doc['apiVersion']} is not a Kubernetes {K8S_VERSION} API")


@pytest.mark.parametrize("values", CASES, ids=IDS)
def test_configmap_loads_with_the_gateways_loader(values: Path | None, tmp_path: Path) -> None:
    docs = render(overlay(values))
    path = tmp_path / "config.yaml"
    path.write_text(next(d for d in find(docs, "ConfigMap") if "config.yaml" in d["data"])["data"]["config.yaml"])
    config = load_config(path)
    experts = overlay(values).get("experts") or overlay(CHART / "values.yaml")["experts"]
    assert [e.name for e in config.experts] == [e["name"] for e in experts]
    services = {s["metadata"]["name"]: s for s in find(docs, "Service", "expert")}
    for spec, expert in zip(experts, config.experts, strict=True):
        if "model" not in spec:  # served elsewhere: called as the values say
            assert (expert.api_base, expert.provider, expert.api_key_env) == \
                (spec.get("apiBase"), spec.get("provider", "openai"), spec.get("apiKeyEnv"))
            continue
        # A served expert: the gateway asks the chart's Service for the name vLLM serves.
        host, port = expert.api_base.removeprefix("http://").removesuffix("/v1").split(":")
        assert int(port) == services[host]["spec"]["ports"][0]["port"]
        deployment = next(d for d in find(docs, "Deployment", "expert") if d["metadata"]["name"] == host)
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--served-model-name") + 1] == expert.model


@pytest.mark.parametrize("values", CASES, ids=IDS)
def test_pods_run_hardened(values: Path | None) -> None:
    docs = render(overlay(values))
    gateway_pods = [*find(docs, "Deployment", "gateway"), *find(docs, "Job"), *find(docs, "CronJob")]
    assert gateway_pods
    for doc in gateway_pods:
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["automountServiceAccountToken"] is False
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}  # HOME, HF_HOME, matplotlib


def test_autoscaled_gateway_leaves_replicas_to_the_autoscaler() -> None:
    for name, kind in (("keda", "ScaledObject"), ("networkpolicy", "HorizontalPodAutoscaler")):
        docs = render(overlay(CHART / "ci" / f"{name}.yaml"))
        assert "replicas" not in one(docs, "Deployment", "gateway")["spec"]
        assert find(docs, kind)
    assert one(render({}), "Deployment", "gateway")["spec"]["replicas"] == 2


def _files_volume(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """The gateway pod's files volume, the gateway container's mount of it, and its plain-valued environment."""
    spec = pod_spec(one(docs, "Deployment", "gateway"))
    container = spec["containers"][0]
    volume = next(v for v in spec["volumes"] if v["name"] == "files")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "files")
    return volume, mount, {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_batch_files_live_on_a_claim_every_gateway_pod_mounts(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.settings import Settings

    docs = render({})
    volume, mount, env = _files_volume(docs)
    claim = one(docs, "PersistentVolumeClaim", "gateway")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # both replicas mount it, wherever they run
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # users' files outlive the release
    assert not mount.get("readOnly")
    assert pod_spec(one(docs, "Deployment", "gateway"))["securityContext"]["fsGroup"] == 10001  # writable by the user
    # The gateway reads the directory and the upload limit from the environment the chart sets.
    for name in ("MOE_FILES_DIR", "MOE_MAX_FILE_BYTES"):
        monkeypatch.setenv(name, env[name])
    settings = Settings(_env_file=None)
    assert settings.moe_files_dir == Path(mount["mountPath"])
    assert settings.moe_max_file_bytes == 200 * 1024 * 1024
    _, _, env = _files_volume(render({"gateway": {"maxFileBytes": 1_000_000_000}}))
    assert env["MOE_MAX_FILE_BYTES"] == "1000000000"


def test_batch_files_on_an_existing_claim_create_none() -> None:
    docs = render({"gateway": {"files": {"existingClaim": "shared-files"}}})
    volume, _, _ = _files_volume(docs)
    assert volume["persistentVolumeClaim"]["claimName"] == "shared-files"
    assert not find(docs, "PersistentVolumeClaim", "gateway")


def test_batch_files_in_the_pod_only_with_one_replica() -> None:
    docs = render({"gateway": {"replicas": 1, "files": {"persistent": False}}})
    volume, mount, env = _files_volume(docs)
    assert volume["emptyDir"] == {"sizeLimit": "10Gi"} and env["MOE_FILES_DIR"] == mount["mountPath"]
    assert not find(docs, "PersistentVolumeClaim", "gateway")
    for doc in docs:
        if doc["kind"] not in CRD_VERSIONS:
            validate(doc, K8S_VERSION, strict=True)


def test_migrations_are_a_hook_and_serving_pods_never_migrate() -> None:
    docs = render({})
    job = one(docs, "Job", "migrations")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in job["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    gateway = pod_spec(one(docs, "Deployment", "gateway"))
    assert "initContainers" not in gateway and gateway["containers"][0]["args"][0] == "serve"
    # SQLite lives in the gateway pod: an init container migrates it there, and no hook Job is rendered.
    sqlite = render(overlay(CHART / "ci" / "sqlite.yaml"))
    assert not find(sqlite, "Job")
    init = pod_spec(one(sqlite, "Deployment", "gateway"))["initContainers"][0]
    assert init["command"] == job["spec"]["template"]["spec"]["containers"][0]["command"]


def test_gpu_experts_request_their_gpus() -> None:
    docs = render(overlay(CHART / "ci" / "gpu-experts.yaml"))
    by_name = {d["spec"]["selector"]["matchLabels"]["moe.expert"]: d for d in find(docs, "Deployment", "expert")}
    humanities = pod_spec(by_name["humanities"])
    assert humanities["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert humanities["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert "--tensor-parallel-size" in humanities["containers"][0]["args"]
    stem = pod_spec(by_name["stem"])  # pvc://claim/path: the weights' claim, read-only, no cache PVC
    assert stem["containers"][0]["args"][0] == "/models/mistralai/Mathstral-7B-v0.1"
    assert stem["volumes"][0]["persistentVolumeClaim"]["claimName"] == "model-weights"
    cpu = render(overlay(CHART / "ci" / "cpu-experts.yaml"))
    for deployment in find(cpu, "Deployment", "expert"):
        container = pod_spec(deployment)["containers"][0]
        assert "vllm-cpu" in container["image"] and "nvidia.com/gpu" not in str(container["resources"])


def test_a_tool_parser_turns_on_vllms_tool_calls() -> None:
    docs = render(overlay(CHART / "ci" / "gpu-experts.yaml"))
    args = {d["spec"]["selector"]["matchLabels"]["moe.expert"]: pod_spec(d)["containers"][0]["args"]
            for d in find(docs, "Deployment", "expert")}
    humanities = args["humanities"]  # toolParser: hermes
    at = humanities.index("--tool-call-parser")
    assert humanities[at - 1 : at + 2] == ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    assert not {"--enable-auto-tool-choice", "--tool-call-parser"} & {*args["general"], *args["stem"]}


# Parses each argument list as `vllm serve` would (unknown flags and bad values fail) and prints what it read.
VLLM_PARSE = """
import json, sys
import vllm
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser(prog="vllm")
ServeSubcommand().subparser_init(parser.add_subparsers(dest="subcommand"))
print(json.dumps({"version": vllm.__version__}))
for argv in json.loads(sys.argv[1]):
    args = parser.parse_args(["serve", *argv])
    print(json.dumps({"model": args.model_tag, "served": args.served_model_name, "port": args.port}))
"""


def test_expert_commands_parse_with_vllms_own_cli() -> None:
    python = CHART.parents[1] / os.environ.get("MOE_VLLM_VENV", ".venv-vllm") / "bin" / "python"
    if not python.exists():
        pytest.skip("needs the vLLM virtualenv (make vllm)")
    containers = [pod_spec(d)["containers"][0] for values in CASES
                  for d in find(render(overlay(values)), "Deployment", "expert")]
    assert all(c["command"] == ["vllm", "serve"] for c in containers)
    done = subprocess.run([python, "-c", VLLM_PARSE, json.dumps([c["args"] for c in containers])],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    version, *parsed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert overlay(CHART / "values.yaml")["vllm"]["image"]["tag"] == f"v{version['version']}"
    for container, read in zip(containers, parsed, strict=True):
        assert read["model"] == container["args"][0]
        assert read["port"] == next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
        assert read["served"] == [container["args"][container["args"].index("--served-model-name") + 1]]


def _objects(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if schema.get("type") == "object" or "object" in schema.get("type", []):
        yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _objects(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _objects(schema[key], f"{path}[]")


# Kubernetes objects the chart passes through as written (the API server, and the tests' kubernetes-validate, check them).
PASS_THROUGH = {".gateway.affinity", ".gateway.topologySpreadConstraints[]", ".networkPolicy.egress[]",
                ".networkPolicy.ingressFrom[]"}


def test_schema_forbids_unknown_keys_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, obj in _objects(schema):
        if path in PASS_THROUGH:
            continue
        # Either a record with named fields and nothing else, or a map whose values are typed (labels, env).
        closed = obj.get("additionalProperties") is False and "properties" in obj
        assert closed or isinstance(obj.get("additionalProperties"), dict), f"{path or 'values'} accepts any key"


def test_schema_knows_the_router_families() -> None:
    from routers import FAMILIES, router_class

    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]
    router = schema["routing"]["properties"]["routers"]["items"]["properties"]["family"]
    assert set(router["enum"]) == set(FAMILIES)
    # Retraining learns from the chosen expert's reward alone: only families that can.
    retrainable = {family for family in FAMILIES if router_class(family).learns_from_partial_scores}
    assert set(schema["retrain"]["properties"]["family"]["enum"]) == retrainable


def test_readme_names_every_top_level_value() -> None:
    readme = (CHART.parents[1] / "README.md").read_text()
    section = readme[readme.index("## Kubernetes (Helm)"):]
    table = set(re.findall(r"`([A-Za-z]+)[.`]", section[:section.index("\n## ", 1)]))
    assert set(overlay(CHART / "values.yaml")) <= table


def _expert(**fields: Any) -> dict[str, Any]:
    return {"experts": [{"name": "general", "model": "hf://org/model", "gpu": {"count": 1}, "cache": {"size": "5Gi"},
                         **fields}]}


# Values the chart must refuse, each with (a fragment of) its message.
BAD_VALUES = {
    "sqlite-with-replicas": ({"database": {"sqlite": {"enabled": True}}, "gateway": {"replicas": 3}},
                             "SQLite keeps the decision log in one pod"),
    "sqlite-with-autoscaler": ({"database": {"sqlite": {"enabled": True}}, "gateway": {"replicas": 1, "autoscaling": {"enabled": True}}},
                               "SQLite keeps the decision log in one pod"),
    "replicas-without-redis": ({"redis": {"enabled": False}}, "more than one replica without Redis"),
    "breakers-without-redis": ({"redis": {"enabled": False}, "gateway": {"requireApiKey": False,
                                "env": {"MOE_BREAKER_THRESHOLD": "3"}}}, "more than one replica without Redis"),
    "gpu-expert-without-gpu": (_expert(gpu={"count": 0}), "a GPU expert needs gpu.count >= 1"),
    "cpu-expert-with-gpu": (_expert(cpu=True), "cannot use gpu.count 1"),
    "tensor-parallel-beyond-gpus": (_expert(tensorParallelSize=4), "tensorParallelSize 4 needs as many GPUs"),
    "hf-model-without-cache": (_expert(cache={}), "an hf:// model needs a model cache"),
    "model-and-api-base": (_expert(apiBase="http://x/v1"), "leave out apiBase and provider"),
    "served-model-with-provider": (_expert(provider="litellm"), "leave out apiBase and provider"),
    "hosted-expert-without-url": ({"experts": [{"name": "x", "servedModelName": "m"}]}, "set model (served by the chart) or apiBase"),
    "api-key-not-from-the-secret": ({"experts": [{"name": "x", "apiBase": "https://x/v1", "apiKeyEnv": "X_KEY"}]},
                                    "apiKeyEnv X_KEY must be one of secrets.extraEnvKeys"),
    "duplicate-expert": ({"experts": [*_expert()["experts"], *_expert()["experts"]]}, "is used twice"),
    "tool-parser-as-a-flag": (_expert(toolParser="--hermes"), "/experts/0/toolParser"),
    "tool-parser-twice": (_expert(toolParser="hermes", args=["--tool-call-parser=mistral"]),
                          "args repeat what toolParser adds"),
    "tool-parser-of-a-hosted-expert": ({"experts": [{"name": "x", "apiBase": "https://x/v1", "toolParser": "hermes"}]},
                                       "toolParser sets up the vLLM server the chart runs"),
    "unknown-top-level-key": ({"replicaCount": 3}, "additional properties 'replicaCount' not allowed"),
    "renamed-key": ({"gateway": {"replicaCount": 3}}, "additional properties 'replicaCount' not allowed"),
    "unknown-expert-key": (_expert(gpus=1), "additional properties 'gpus' not allowed"),
    "unknown-virtual-model-key": ({"routing": {"virtualModels": [{"name": "m", "router": "embedding", "knob": "0.3"}]}},
                                  "additional properties 'knob' not allowed"),
    "bad-model-scheme": (_expert(model="s3://bucket/model"), "/experts/0/model"),
    "drain-outlasts-grace": ({"gateway": {"drainSeconds": 60}}, "must be longer than gateway.preStopSeconds + gateway.drainSeconds"),
    "pre-stop-and-drain-outlast-grace": ({"gateway": {"preStopSeconds": 20}}, "(45) must be longer than"),
    "per-pod-files-with-replicas": ({"gateway": {"files": {"persistent": False}}},
                                    "gateway.files.persistent: false gives each pod its own emptyDir"),
    "per-pod-files-with-autoscaler": ({"gateway": {"replicas": 1, "files": {"persistent": False},
                                                   "keda": {"enabled": True, "maxReplicas": 1}}},
                                      "gateway.files.persistent: false gives each pod its own emptyDir"),
    "one-node-files-with-replicas": ({"gateway": {"files": {"accessMode": "ReadWriteOnce"}}},
                                     "gateway.files.accessMode ReadWriteOnce lets one node mount the files claim"),
    "read-only-files": ({"gateway": {"files": {"accessMode": "ReadOnlyMany"}}}, "/gateway/files/accessMode"),
    "files-claim-left-unmounted": ({"gateway": {"replicas": 1, "files": {"persistent": False, "existingClaim": "f"}}},
                                   "gateway.files.existingClaim is not mounted"),
    "two-autoscalers": ({"gateway": {"autoscaling": {"enabled": True}, "keda": {"enabled": True}}}, "enable one"),
    "retrain-on-sqlite": ({"database": {"sqlite": {"enabled": True}}, "gateway": {"replicas": 1},
                           "retrain": {"enabled": True}}, "retrain.enabled needs PostgreSQL (database.sqlite.enabled: false)"),
    "retrain-unknown-router": ({"retrain": {"enabled": True, "router": "bert"}},
                               'retrain.router "bert" is not one of routing.routers (embedding)'),
    "retrain-base-data-without-claim": ({"retrain": {"enabled": True, "baseData": "pool"}},
                                        "retrain.baseData is a path in retrain.dataClaim"),
    "retrain-family-without-partial-rewards": ({"retrain": {"family": "embedding-domain"}}, "/retrain/family"),
    "gate-check-without-bound": ({"retrain": {"gate": {"checks": [{"metric": "n_records"}]}}}, "/retrain/gate/checks/0"),
    "no-secret": ({"secrets": {"existingSecret": ""}}, "secrets.existingSecret: name the Secret"),
    "retention-age-in-words": ({"retention": {"olderThan": "90 days"}}, "/retention/olderThan"),
    "retention-age-zero": ({"retention": {"olderThan": "0d"}}, "/retention/olderThan"),
    "retention-age-in-weeks": ({"retention": {"olderThan": "2w"}}, "/retention/olderThan"),
    "responses-kept-no-days": ({"retention": {"responsesDays": 0}}, "/retention/responsesDays"),
}


@pytest.mark.parametrize("values,message", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_are_refused_with_their_reason(values: dict[str, Any], message: str) -> None:
    with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as refused:
        render(values)
    assert message in str(refused.value)
