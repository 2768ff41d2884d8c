"""Render, then run: the chart's migrations Job, gateway Deployment, retraining and retention CronJobs, run as rendered
(command, arguments, environment, user, read-only root, volumes) in the gateway image with podman, against
the real PostgreSQL and Redis and a scripted expert. A chart whose commands, ports, paths or environment
drift from the CLI fails here. The image comes from `make image` (scripts/image.sh)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text

from bench.upstream import free_port
from migrations.router_versions import RouterVersions
from tests.gateway.chart import find, one, pod_spec, render
from tests.gateway.support import MATH_QUESTION, fresh_redis_db

REPO = Path(__file__).resolve().parents[2]
REDIS_DB = 14  # a database no other test uses
HUMANITIES_QUESTION = "Which treaty ended the Thirty Years' War, and what did it settle about sovereignty?"
SECRET = "moe-test"
PODMAN = ["podman", "--runtime", "runc"]  # runc: the default runtime fails on CI kernels' cgroups
# The settings scripts/image.sh builds with, unless the caller has its own.
PODMAN_ENV = {"CONTAINERS_CONF": str(REPO / "scripts" / "containers.conf"), **os.environ}


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, env=PODMAN_ENV)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {args[0]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


class Cluster:
    """What the manifests reference outside themselves: the Secret's data, ConfigMaps and claims as folders."""

    def __init__(self, docs: list[dict[str, Any]], secret: dict[str, str], claims: dict[str, Path], workdir: Path) -> None:
        self.secret, self.claims, self.configmaps = secret, claims, {}
        for cm in find(docs, "ConfigMap"):
            folder = workdir / "configmaps" / cm["metadata"]["name"]
            folder.mkdir(parents=True)
            for key, value in cm["data"].items():
                (folder / key).write_text(value)
            folder.chmod(0o755)
            self.configmaps[cm["metadata"]["name"]] = folder

    def run_args(self, pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
        """`podman run` arguments for a rendered container, up to and including the image."""
        security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        args = ["--network", "host", "--user", f"{security['runAsUser']}:{security['runAsGroup']}"]
        if security.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            volume, path = volumes[mount["name"]], mount["mountPath"]
            if "emptyDir" in volume:  # mode 1777 stands in for the pod's fsGroup
                args += ["--tmpfs", f"{path}:rw,mode=1777"]
            elif "configMap" in volume:
                args += ["-v", f"{self.configmaps[volume['configMap']['name']]}:{path}:ro"]
            else:
                claim = volume["persistentVolumeClaim"]
                read_only = mount.get("readOnly") or claim.get("readOnly")
                args += ["-v", f"{self.claims[claim['claimName']]}:{path}" + (":ro" if read_only else "")]
        for env in container.get("env", []):
            value = env["value"] if "value" in env else self._secret(env["valueFrom"]["secretKeyRef"])
            args += ["-e", f"{env['name']}={value}"]
        command = container.get("command", [])
        if command:
            args += ["--entrypoint", json.dumps(command[:1])]
        return [*args, container["image"], *command[1:], *container.get("args", [])]

    def _secret(self, ref: dict[str, str]) -> str:
        assert ref["name"] == SECRET, f"the manifest reads Secret {ref['name']}, not the one named in values"
        return self.secret[ref["key"]]


def probe_url(container: dict[str, Any], probe: str) -> str:
    get = container[probe]["httpGet"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == get["port"]) \
        if isinstance(get["port"], str) else get["port"]
    return f"http://127.0.0.1:{port}{get['path']}"


def wait_ok(url: str, timeout_s: float) -> httpx.Response:
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=5)
            if last.status_code == 200:
                return last
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer 200 within {timeout_s} s (last: {last and last.text})")


@pytest.fixture(scope="module")
def image() -> str:
    image = "localhost/moe-gateway:dev"
    if shutil.which("podman") is None or podman("image", "exists", image, check=False).returncode != 0:
        pytest.skip(f"no {image}: build it with `make image` (scripts/image.sh)")  # CI counts a skip as a failure
    return image


def values(image: str, upstream: str, port: int) -> dict[str, Any]:
    repository, tag = image.rsplit(":", 1)
    v1 = f"{upstream}/v1"
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "secrets": {"existingSecret": SECRET},
        "redis": {"enabled": True},
        # One replica: Batch API files in the pod's own folder (no shared claim to stand in for).
        "gateway": {"replicas": 1, "port": port, "drainSeconds": 5, "terminationGracePeriodSeconds": 15,
                    "files": {"persistent": False}},
        # Exploration and kept text: what the retraining CronJob learns from, with the callers' feedback.
        "routing": {"routers": [{"name": "embedding", "artifact": "/app/var/routers/embedding-domain"}],
                    "virtualModels": [{"name": "moe-auto", "router": "embedding"},
                                      {"name": "moe-learning", "router": "embedding", "exploration": {"epsilon": 0.3},
                                       "store_text": {"retention_days": 7}}]},
        "retrain": {"enabled": True, "gate": {"checks": [{"metric": "n_records", "min": 20}]}},
        "experts": [
            {"name": "stem", "apiBase": v1, "servedModelName": "echo-stem", "pricePerMtok": 0.2,
             "domains": ["math", "physics", "chemistry", "engineering", "computer science"]},
            {"name": "humanities", "apiBase": v1, "servedModelName": "echo-humanities", "pricePerMtok": 0.1,
             "domains": ["history", "philosophy", "law", "psychology"]},
            {"name": "general", "apiBase": v1, "servedModelName": "echo-general", "pricePerMtok": 0.1,
             "domains": ["business", "economics", "health", "biology", "other"]},
        ],
    }


@pytest.fixture
def running() -> Iterator[list[str]]:
    """Names of the detached containers this test starts; removed at the end."""
    names: list[str] = []
    yield names
    for name in names:
        podman("rm", "--force", "--time", "10", name, check=False)


def start_gateway(cluster: Cluster, pod: dict[str, Any], running: list[str]) -> None:
    """Runs the pod's gateway container detached (its init containers first) until every probe answers 200."""
    for init in pod.get("initContainers", []):
        podman("run", "--rm", *cluster.run_args(pod, init), timeout=300)
    gateway = pod["containers"][0]
    name = f"moe-test-{uuid.uuid4().hex[:8]}"
    running.append(name)
    podman("run", "--detach", "--name", name, *cluster.run_args(pod, gateway))
    try:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            wait_ok(probe_url(gateway, probe), timeout_s=180)
    except AssertionError:
        raise AssertionError(podman("logs", name, check=False).stderr[-4000:]) from None


def assert_routed(port: int, headers: dict[str, str]) -> None:
    reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, headers=headers,
                       json={"model": "moe-auto", "messages": [{"role": "user", "content": MATH_QUESTION}]})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-moe-expert"] == "stem"
    assert MATH_QUESTION in reply.json()["choices"][0]["message"]["content"]


def test_rendered_jobs_and_gateway_run_in_the_image(
    image: str, upstream: str, postgres_url: str, tmp_path: Path, running: list[str]
) -> None:
    port = free_port()
    docs = render(values(image, upstream, port))
    with fresh_redis_db(REDIS_DB) as redis_url:
        cluster = Cluster(docs, {"DATABASE_URL": postgres_url, "REDIS_URL": redis_url}, {}, tmp_path)

        # 1. The migrations hook Job migrates the empty database.
        job = pod_spec(one(docs, "Job", "migrations"))
        done = podman("run", "--rm", *cluster.run_args(job, job["containers"][0]), timeout=300)
        assert "database at head" in done.stdout
        engine = create_engine(postgres_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        engine.dispose()

        # 2. The gateway Deployment: its probes answer 200, and a key created as NOTES.txt says opens /v1.
        pod = pod_spec(one(docs, "Deployment", "gateway"))
        gateway = pod["containers"][0]
        start_gateway(cluster, pod, running)
        ready = httpx.get(probe_url(gateway, "readinessProbe")).json()
        assert ready["ready"] is True and all(ready["checks"].values()), ready
        assert ready["redis"] == {"configured": True, "reachable": True}  # REDIS_URL came from the Secret
        assert httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                          json={"model": "moe-auto", "messages": [{"role": "user", "content": "hi"}]}).status_code == 401
        keys = {**gateway, "command": ["moe"], "args": ["keys", "create", "--name", "ci", "--tenant", "ci"]}
        key = podman("run", "--rm", *cluster.run_args(pod, keys), timeout=120).stdout.strip()
        assert_routed(port, {"Authorization": f"Bearer {key}"})

        # 3. Traffic with feedback, then the retraining CronJob: a candidate learnt from the log, gated, made active.
        auth = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", headers=auth, timeout=60) as client:
            for i in range(60):
                question = f"{(MATH_QUESTION, HUMANITIES_QUESTION)[i % 2]} ({i})"
                reply = client.post("/chat/completions",
                                    json={"model": "moe-learning", "messages": [{"role": "user", "content": question}]})
                assert reply.status_code == 200, reply.text
                verdict = {"decision_id": reply.headers["x-moe-decision-id"],
                           "score": float(reply.headers["x-moe-expert"] == ("stem", "humanities")[i % 2])}
                assert client.post("/feedback", json=verdict).status_code == 200
        engine = create_engine(postgres_url)
        versions = RouterVersions(engine)
        deadline = time.monotonic() + 15  # records are written in batches off the request path
        while _kept_text(engine) < 60:
            assert time.monotonic() < deadline, "the decisions and their text were not written"
            time.sleep(0.2)
        cron = pod_spec(one(docs, "CronJob", "retrain"))
        done = podman("run", "--rm", *cluster.run_args(cron, cron["containers"][0]), timeout=420, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        active = versions.serving("embedding")["active"]
        engine.dispose()
        assert active is not None and active.version.startswith("retrain-") and active.family == "reward-distilled"
        assert active.metrics["n_records"] == 60

        # 4. The retention CronJob: `moe db prune` in the image, with the gateway's config and database.
        prune = pod_spec(one(docs, "CronJob", "retention"))
        pruned = podman("run", "--rm", *cluster.run_args(prune, prune["containers"][0]), timeout=120, check=False)
        assert pruned.returncode == 0, pruned.stdout[-3000:] + pruned.stderr[-3000:]
        assert "removed 0 stored responses older than 30 days" in pruned.stdout + pruned.stderr


def _kept_text(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM decisions WHERE prompt IS NOT NULL")).scalar_one()


def test_rendered_migrations_job_fails_loudly_when_the_database_never_answers(
    image: str, upstream: str, tmp_path: Path
) -> None:
    docs = render({**values(image, upstream, free_port()), "migrations": {"waitSeconds": 3}})
    closed = f"postgresql+psycopg://moe:hunter2@127.0.0.1:{free_port()}/moe"  # nothing listens there
    cluster = Cluster(docs, {"DATABASE_URL": closed, "REDIS_URL": "redis://127.0.0.1:1/0"}, {}, tmp_path)
    job = pod_spec(one(docs, "Job", "migrations"))
    done = podman("run", "--rm", *cluster.run_args(job, job["containers"][0]), timeout=120, check=False)
    assert done.returncode == 1
    assert "did not answer within 3 s" in done.stderr and "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr + done.stdout  # the password is never printed


def test_rendered_sqlite_gateway_migrates_in_its_pod_and_records_there(
    image: str, upstream: str, tmp_path: Path, running: list[str]
) -> None:
    port = free_port()
    docs = render({**values(image, upstream, port), "secrets": {"existingSecret": ""}, "redis": {"enabled": False},
                   "database": {"sqlite": {"enabled": True, "existingClaim": "data"}},
                   "gateway": {"replicas": 1, "port": port, "requireApiKey": False, "files": {"persistent": False}},
                   "retrain": {"enabled": False}})
    assert not find(docs, "Job")  # the init container migrates instead
    data = tmp_path / "data"
    data.mkdir(mode=0o777)
    data.chmod(0o777)
    cluster = Cluster(docs, {}, {"data": data}, tmp_path)
    start_gateway(cluster, pod_spec(one(docs, "Deployment", "gateway")), running)
    assert_routed(port, {})
    engine = create_engine(f"sqlite:///{data / 'moe.db'}")

    def recorded() -> int:  # a connection per look: an open read transaction would hold off the gateway's writes
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM decisions WHERE chosen_expert = 'stem'")).scalar_one()

    deadline = time.monotonic() + 15  # records are written in batches off the request path
    while not recorded():
        assert time.monotonic() < deadline, "no decision record in the pod's SQLite file"
        time.sleep(0.2)
    engine.dispose()
