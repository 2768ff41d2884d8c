"""The launcher's pure parts: the vLLM command built from the config, its environment, stopping."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from experts import launcher
from gateway.config import DEFAULT_CONFIG, GatewayConfig, load_config

PYTHON = Path("/venv/bin/python")


def _config(servers: list[dict], experts: list[dict]) -> GatewayConfig:
    return GatewayConfig.model_validate({"servers": servers, "experts": experts})


def test_default_config_command_serves_every_expert_name_from_the_prepared_folder(tmp_path: Path) -> None:
    config = load_config(DEFAULT_CONFIG)
    (server,) = config.servers
    model = launcher.model_path(server, tmp_path)
    command = launcher.server_command(config, server, python=PYTHON, model=model)

    assert model == str(tmp_path.absolute() / "smollm2-135m-instruct")
    assert command[:3] == [str(PYTHON), "-m", "vllm.entrypoints.openai.api_server"]
    assert command[command.index("--model") + 1] == model
    names = command[command.index("--served-model-name") + 1 : command.index("--host")]
    assert names == ["smollm-stem", "smollm-humanities", "smollm-general"]
    assert command[command.index("--host") + 1 :] == ["127.0.0.1", "--port", "8101", "--max-model-len", "2048"]


def test_other_models_pass_through_and_each_server_gets_only_its_experts() -> None:
    config = _config(
        servers=[
            {"name": "big", "model": "Qwen/Qwen2.5-7B-Instruct", "port": 9001, "host": "0.0.0.0"},
            {"name": "local", "model": "/models/coder", "port": 9002},
        ],
        experts=[
            {"name": "a", "model": "qwen", "api_base": "http://0.0.0.0:9001/v1"},
            {"name": "b", "model": "qwen", "api_base": "http://0.0.0.0:9001/v1/"},
            {"name": "c", "model": "coder", "api_base": "http://127.0.0.1:9002/v1"},
        ],
    )
    big, local = config.servers
    assert launcher.model_path(big) == "Qwen/Qwen2.5-7B-Instruct"
    assert launcher.model_path(local) == "/models/coder"

    command = launcher.server_command(config, big, python=PYTHON, model=launcher.model_path(big))
    # two experts on one model name: the name is served once
    assert command[command.index("--served-model-name") + 1 : command.index("--host")] == ["qwen"]
    assert command[-4:] == ["--host", "0.0.0.0", "--port", "9001"]
    command = launcher.server_command(config, local, python=PYTHON, model="/models/coder")
    assert command[command.index("--served-model-name") + 1] == "coder"


def test_a_tool_parser_lets_the_server_take_tool_choice_auto() -> None:
    config = _config(servers=[{"name": "s", "model": "Qwen/Qwen2.5-7B-Instruct", "port": 9001, "tool_parser": "hermes",
                               "args": ["--max-model-len", "4096"]}],
                     experts=[{"name": "a", "model": "qwen", "api_base": "http://127.0.0.1:9001/v1"}])
    command = launcher.server_command(config, config.servers[0], python=PYTHON, model="Qwen/Qwen2.5-7B-Instruct")
    assert command[command.index("--port") + 2 :] == [
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--max-model-len", "4096"]


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"tool_parser": "--hermes"}, "servers.0.tool_parser"),  # would be read as a flag of its own
        ({"tool_parser": "hermes --trust-remote-code"}, "servers.0.tool_parser"),
        ({"tool_parser": ""}, "servers.0.tool_parser"),
        ({"tool_parser": "hermes", "args": ["--tool-call-parser=mistral"]}, "tool_parser already adds"),
        ({"tool_parser": "hermes", "args": ["--enable-auto-tool-choice"]}, "tool_parser already adds"),
        ({"tool_parsr": "hermes"}, "servers.0.tool_parsr"),
    ],
)
def test_a_tool_parser_is_one_name_set_in_one_place(server: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _config(servers=[{"name": "s", "model": "m", "port": 9001, **server}],
                experts=[{"name": "a", "model": "m", "api_base": "http://127.0.0.1:9001/v1"}])


def test_tool_flags_in_args_alone_pass_through() -> None:
    config = _config(servers=[{"name": "s", "model": "m", "port": 9001,
                               "args": ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]}],
                     experts=[{"name": "a", "model": "m", "api_base": "http://127.0.0.1:9001/v1"}])
    command = launcher.server_command(config, config.servers[0], python=PYTHON, model="m")
    assert command[command.index("--port") + 2 :] == ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]


def test_server_env_sets_cpu_defaults_without_overriding_the_caller() -> None:
    env = launcher.server_env({"PATH": "/bin", "VLLM_CPU_KVCACHE_SPACE": "4", "PYTHONPATH": "/repo"})
    assert env["PATH"] == "/bin"
    assert "PYTHONPATH" not in env  # the gateway's paths would shadow the vLLM venv's packages
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert env["HF_HUB_OFFLINE"] == "1"


def test_venv_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(launcher.VENV_ENV, str(tmp_path / "v"))
    assert launcher.vllm_venv() == tmp_path / "v"
    with pytest.raises(launcher.LauncherError, match="setup-vllm.sh"):
        launcher.vllm_python()


def test_prepared_folder_is_not_prepared_again(tmp_path: Path) -> None:
    folder = launcher.smollm2_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    # no vLLM venv is needed (nor looked for) when the folder is already there
    assert launcher.prepare_smollm2(tmp_path, venv=tmp_path / "missing") == folder.absolute()


def test_stop_servers_ends_the_whole_process_group(tmp_path: Path) -> None:
    # A parent that ignores SIGTERM and a child of its own, like vLLM's API server and engine core.
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    config = load_config(DEFAULT_CONFIG)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    child_pid = int(process.stdout.readline())  # type: ignore[union-attr]
    running = launcher.RunningServer(config.servers[0], process, tmp_path / "log", [])

    started = time.monotonic()
    launcher.stop_servers([running], grace_s=0.5)

    assert process.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid)


def test_sigterm_while_the_gateway_serves_still_stops_the_servers(tmp_path: Path) -> None:
    """`moe up` shape: servers around a uvicorn server; uvicorn re-raises SIGTERM once it has shut down."""
    script = f"""
import subprocess, sys
from pathlib import Path
import uvicorn
from experts import launcher
from gateway.config import DEFAULT_CONFIG, load_config

def start_servers(config, **_):
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a server in its own group, as vLLM
    print(process.pid, flush=True)
    return [launcher.RunningServer(config.servers[0], process, Path({str(tmp_path)!r}), [])]

async def app(scope, receive, send):
    pass

launcher.start_servers = start_servers
with launcher.running_servers(load_config(DEFAULT_CONFIG)):
    server = uvicorn.Server(uvicorn.Config(app, port=0, log_level="warning", lifespan="off"))
    print("serving", flush=True)
    server.run()
"""
    gateway = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    server_pid = int(gateway.stdout.readline())  # type: ignore[union-attr]
    assert gateway.stdout.readline().strip() == "serving"  # type: ignore[union-attr]
    time.sleep(1.0)  # uvicorn installs its signal handlers as it starts
    gateway.send_signal(signal.SIGTERM)
    assert gateway.wait(timeout=30) == 128 + signal.SIGTERM
    assert not _alive(server_pid)


def _alive(pid: int) -> bool:
    """A zombie (killed, not yet reaped by whoever adopted it) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_wait_ready_fails_fast_with_the_log_tail_when_the_server_dies(tmp_path: Path) -> None:
    config = load_config(DEFAULT_CONFIG)
    log = tmp_path / "smollm.log"
    log.write_text("loading...\nValueError: no such model\n")
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    running = launcher.RunningServer(config.servers[0], process, log, [])
    with pytest.raises(launcher.LauncherError, match="exited with code 3(.|\n)*no such model"):
        launcher.wait_ready([running], timeout_s=5)


def test_wait_any_exit_returns_the_server_whose_process_ended(tmp_path: Path) -> None:
    config = load_config(DEFAULT_CONFIG)
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    running = launcher.RunningServer(config.servers[0], process, tmp_path / "log", [])
    assert launcher.wait_any_exit([running], poll_s=0.05) is running
