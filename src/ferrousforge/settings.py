"""Server configuration: one settings model, the source of CLI flags and env vars.

Precedence, highest first: command-line flags, ``FERROUSFORGE_*`` environment
variables, the ``[server]`` table of the TOML config file, the defaults below.
The config file may also declare several models (``[[models]]``) with aliases
and per-model settings.
"""

from __future__ import annotations

import argparse
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ferrousforge.models.units import parse_size

ENV_PREFIX = "FERROUSFORGE_"


def _split_commas(value: Any) -> Any:
    """Env vars carry lists as ``a,b,c``; the CLI and TOML already give lists."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


ToolFormatName = Literal["auto", "hermes", "llama3", "mistral", "generic"]
PoolingName = Literal["mean", "cls", "last", "rank", "none"]
OnOffAuto = Literal["auto", "on", "off"]
CacheTypeName = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]

# Server-wide sampling defaults: a request that leaves one of these out gets the server's.
SAMPLING_DEFAULTS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "seed",
)


def flags(*names: str, negative: tuple[str, ...] = ()) -> dict[str, Any]:
    """Extra spellings of a setting's flag (llama-server's, so its scripts work unchanged)."""
    return {"flags": list(names), "negative_flags": list(negative)}


class ModelSettings(BaseModel):
    """One model the server may load; every unset field falls back to the server's value."""

    model_config = ConfigDict(extra="forbid")

    alias: str | None = Field(None, description="name clients use in the 'model' field")
    path: str = Field(
        description="path to the .gguf file (relative to the config file), or a Hugging Face "
        "REPO[:QUANT] (pulled, or downloaded at startup with --pull)"
    )
    ctx_size: int | None = Field(None, ge=0)
    kv_unified: bool | None = None
    cache_ram: int | None = Field(None, ge=0, description="host-RAM prompt cache, MiB")
    parallel: int | None = Field(None, ge=1, le=256)
    threads: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    max_waiting: int | None = Field(None, ge=0)
    chat_template: str | None = Field(None, description="Jinja2 template overriding the GGUF's")
    tool_format: ToolFormatName | None = Field(
        None, description="tool-call format (default: the server's --tool-format)"
    )
    pooling: PoolingName | None = Field(
        None, description="embedding pooling (default: the server's --pooling)"
    )
    rpc: list[str] | None = Field(
        None,
        description="rpc workers (host:port) holding this model's layers (default: the "
        "server's --rpc; [] runs it on this machine)",
    )
    tensor_split: list[float] | None = Field(
        None, description="each rpc worker's share (default: the server's --tensor-split)"
    )
    embedding: bool | None = Field(
        None,
        description="embedding-only: this model embeds (or ranks with pooling 'rank') and "
        "never generates (default: the server's --embedding)",
    )

    @field_validator("rpc", "tensor_split", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_commas(value)


class ServerSettings(BaseSettings):
    """Everything ``ferrousforge serve`` can be told. Each field is a flag and an env var."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    model: str | None = Field(
        None,
        description="model path or alias to serve (default: the bundled model, or every "
        "model in --config)",
        json_schema_extra=flags("-m"),
    )
    alias: str | None = Field(
        None,
        description="the name clients use for --model in the 'model' field (default: the "
        "file's stem); several comma-separated names all serve it, the first in sorted order "
        "is its id (as llama-server)",
        json_schema_extra=flags("-a"),
    )
    tags: str | None = Field(
        None, description="comma-separated tags of --model, listed in /v1/models (as llama-server)"
    )
    any_model_name: bool = Field(
        False,
        description="with one --model, a request naming another model gets it instead of a "
        "404 (as llama-server, which ignores the name; ferrousforge-server turns this on)",
    )
    pull: bool = Field(
        False,
        description="download a Hugging Face model named REPO[:QUANT] that is not in the cache "
        "yet (off: such a name must be pulled first with `ferrousforge pull`)",
        json_schema_extra=flags(negative=("--offline",)),
    )
    host: str = Field("127.0.0.1", description="address to listen on (several: comma-separated)")
    port: int = Field(8080, ge=0, le=65535, description="port to listen on")
    http: Literal["auto", "h11", "httptools"] = Field(
        "auto",
        description="HTTP/1.1 implementation: httptools (auto, when installed) is the faster; "
        "h11 sends header names with their casing, as llama-server (ferrousforge-server's "
        "default, for clients that look headers up case-sensitively)",
    )
    api_key: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="API key clients must send as 'Authorization: Bearer KEY' (repeatable; "
        "env: comma-separated)",
    )
    api_key_file: str | None = Field(
        None, description="file with one API key per line, added to --api-key's"
    )
    parallel: int = Field(
        8,
        ge=1,
        le=256,
        description="sequences decoded together per model",
        json_schema_extra=flags("-np"),
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads (default: all cores)",
        json_schema_extra=flags("-t"),
    )
    threads_batch: int | None = Field(
        None,
        ge=1,
        description="CPU threads for prompt processing (default: --threads)",
        json_schema_extra=flags("-tb"),
    )
    ctx_size: int = Field(
        0,
        ge=0,
        description="total KV cache in tokens, split evenly across the --parallel sequences "
        "(0: the model's training context per sequence, as far as --memory-budget or half "
        "the available RAM holds it; if it holds less, one pool of what fits that any "
        "request may fill up to the training context; the load log says what was chosen)",
        json_schema_extra=flags("-c"),
    )
    kv_unified: bool | None = Field(
        None,
        description="pool the KV cache so one request may use all of it (slower batched "
        "decode; output depends on the batch); --no-kv-unified: one stream per slot always "
        "(default: streams, unless --ctx-size 0 cannot give every slot the model's training "
        "context, then one pool of what fits)",
        json_schema_extra=flags("-kvu", negative=("-no-kvu",)),
    )
    batch_size: int = Field(
        512, ge=1, description="tokens per llama_decode", json_schema_extra=flags("-b")
    )
    ubatch_size: int | None = Field(
        None,
        ge=1,
        description="tokens per physical micro-batch (default: min(512, --batch-size))",
        json_schema_extra=flags("-ub"),
    )
    n_gpu_layers: int = Field(
        -1,
        ge=-1,
        description="layers offloaded to the accelerator, when the library has one (-1: all)",
        json_schema_extra=flags("-ngl", "--gpu-layers"),
    )
    rpc: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="llama.cpp RPC workers (host:port, comma-separated; see `ferrousforge "
        "rpc-worker`) that hold the served models' layers; no authentication: private "
        "networks only",
    )
    tensor_split: Annotated[list[float] | None, NoDecode] = Field(
        None,
        description="how much of the model each device gets (comma-separated, in --rpc order "
        "with --rpc; default: by free memory)",
        json_schema_extra=flags("-ts"),
    )
    rpc_timeout: float = Field(
        120.0,
        gt=0,
        description="seconds one step may take on the --rpc workers before they count as lost",
    )
    flash_attn: OnOffAuto = Field(
        "auto",
        description="flash attention: on, off, or auto (llama.cpp decides per device)",
        json_schema_extra=flags("-fa"),
    )
    cache_type_k: CacheTypeName = Field(
        "f16", description="KV cache type of K", json_schema_extra=flags("-ctk")
    )
    cache_type_v: CacheTypeName = Field(
        "f16", description="KV cache type of V", json_schema_extra=flags("-ctv")
    )
    # 8192 MiB as llama-server's --cache-ram: the same ceiling for users who switch. It is
    # taken only as prompts leave their slots (a 150-token prompt of the default model is
    # about 3.5 MiB, a 2000-token one of an 8B model about 250 MiB), per loaded model.
    cache_ram: int = Field(
        8192,
        ge=0,
        description="MiB of host RAM per model for the KV of prompts that left their slot, "
        "restored when a prompt sharing their prefix comes back (0: off)",
        json_schema_extra=flags("-cram"),
    )
    max_waiting: int = Field(
        64, ge=0, description="requests queued beyond the running ones before answering 503"
    )
    sample_budget_ms: float = Field(
        500.0,
        ge=0,
        description="per-token sampling CPU-time budget: a request whose sampling (e.g. a huge "
        "grammar) takes longer for two tokens in a row is ended with an error, so it cannot "
        "stall the others; a grammar whose first step alone takes longer is refused (0: no "
        "budget)",
    )
    draft_max: int = Field(
        16,
        ge=0,
        le=256,
        description="speculative decoding by prompt lookup: most tokens guessed from the "
        "sequence's own earlier tokens and verified per step (0: off; a request may lower "
        "it with 'speculative.n_max')",
    )
    draft_min: int = Field(
        1, ge=1, le=256, description="speculative decoding: shorter drafts are not verified"
    )
    draft_max_batch: int = Field(
        2,
        ge=0,
        description="speculative decoding: draft only while at most this many sequences are "
        "generating (a fuller batch already keeps the cores busy)",
    )
    models_dir: str | None = Field(
        None,
        description="serve every .gguf under this folder too (named by file stem; split "
        "models by their first part), each loaded on its first request",
    )
    pulled_models: bool = Field(
        True,
        description="also serve every model pulled with `ferrousforge pull` (in the Hugging "
        "Face cache), named REPO:QUANT, each loaded on its first request (not with --model)",
    )
    max_loaded_models: int = Field(
        0,
        ge=0,
        description="most models loaded at once: loading another unloads the least recently "
        "used, an idle one first (0: no limit)",
        json_schema_extra=flags("--models-max"),
    )
    memory_budget: str | None = Field(
        None,
        description="memory all loaded models may take, e.g. 8GiB or 6000MB: weights from the "
        "GGUF's tensor sizes plus KV cache and compute buffers, estimated before loading; the "
        "least recently used models are unloaded to stay under it (default: no budget)",
    )
    idle_unload: float | None = Field(
        None,
        ge=0,
        description="unload a model after this many seconds without requests (a request's "
        "keep_alive overrides it for its model; default: never)",
        json_schema_extra=flags("--sleep-idle-seconds"),
    )
    pooling: PoolingName | None = Field(
        None,
        description="how /v1/embeddings pools a sequence: mean, cls, last, rank (a "
        "reranker's scores, for /v1/rerank), or none (one vector per token, on /embedding "
        "only); default: the GGUF's own, else mean",
    )
    embedding: bool = Field(
        False,
        description="embedding-only: generation routes answer 501 and each model's generation "
        "context shrinks to one small slot (for dedicated embedding models; without it a "
        "model serves both; per model in the config file: embedding = true)",
        json_schema_extra=flags("--embeddings"),
    )
    reranking: bool = Field(
        False,
        description="serve /v1/rerank with rank pooling (the same as --pooling rank and "
        "--embedding)",
        json_schema_extra=flags("--rerank"),
    )
    embedding_batch: int = Field(
        2048,
        ge=1,
        description="tokens per embedding decode (many inputs share one): the longest input "
        "/v1/embeddings takes, within the model's training context",
    )
    max_tokens_limit: int = Field(
        4096,
        ge=-1,
        description="ceiling on max_tokens; also the default when a request sets none (-1: "
        "no ceiling, a request may fill its context)",
        json_schema_extra=flags("-n", "--n-predict", "--predict"),
    )
    temperature: float | None = Field(
        None,
        ge=0,
        description="default temperature of requests that set none (default: 0.8)",
        json_schema_extra=flags("--temp"),
    )
    top_k: int | None = Field(None, ge=0, description="default top_k (default: 40)")
    top_p: float | None = Field(None, ge=0, le=1, description="default top_p (default: 0.95)")
    min_p: float | None = Field(None, ge=0, le=1, description="default min_p (default: 0.05)")
    repeat_penalty: float | None = Field(
        None, ge=0, description="default repeat_penalty (default: 1.0, off)"
    )
    repeat_last_n: int | None = Field(
        None, ge=-1, description="default repeat_last_n (default: 64)"
    )
    presence_penalty: float | None = Field(
        None, ge=-2, le=2, description="default presence_penalty (default: 0)"
    )
    frequency_penalty: float | None = Field(
        None, ge=-2, le=2, description="default frequency_penalty (default: 0)"
    )
    seed: int | None = Field(
        None,
        ge=-1,
        le=2**32 - 1,
        description="default sampling seed of requests that set none (-1 or unset: random)",
        json_schema_extra=flags("-s"),
    )
    chat_template: str | None = Field(
        None, description="Jinja2 chat template overriding the model's (for --model)"
    )
    chat_template_file: str | None = Field(
        None, description="file holding a Jinja2 chat template overriding the model's"
    )
    jinja: bool = Field(
        True,
        description="render chat templates with Jinja2 (off: llama.cpp's built-in template "
        "for the model's, as llama-server without --jinja; tools are then refused)",
    )
    any_model_name: bool = Field(
        False,
        description="a server with one model serves it whatever model a request names, as "
        "llama-server does (ferrousforge-server turns this on); off: an unknown name is a 404",
    )
    metrics: bool = Field(True, description="serve /metrics in Prometheus format (off: 501)")
    slots: bool = Field(
        True,
        description="serve GET /slots (each slot's state) and POST /slots/ID (erase, save, "
        "restore)",
    )
    slot_save_path: str | None = Field(
        None,
        description="folder where POST /slots/ID?action=save|restore keeps slot KV files "
        "(unset: save and restore are refused)",
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="largest request body accepted (413 above it)"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins allowed by CORS (repeatable; off when empty; '*': any, "
        "'localhost': any origin on this machine; ferrousforge-server defaults to '*' as "
        "llama-server)",
    )
    cors_methods: str = Field(
        "GET, POST, DELETE, OPTIONS", description="methods a CORS preflight allows"
    )
    cors_headers: str = Field("*", description="headers a CORS preflight allows")
    cors_credentials: bool = Field(
        True,
        description="CORS allows credentials (with --cors-origins '*' the request's Origin "
        "is echoed back, as llama-server)",
    )
    ui_mcp_proxy: bool = Field(
        False,
        description="serve llama-server's experimental CORS proxy, GET/POST /cors-proxy?url=URL "
        "(the server fetches URLs for API-key holders; off: 403)",
        json_schema_extra=flags("--webui-mcp-proxy"),
    )
    llama_lib: str | None = Field(
        None, description="use this libllama (file or directory) instead of the bundled one"
    )
    tool_format: ToolFormatName = Field(
        "auto",
        description="how models write tool calls: auto (found from the chat template), "
        "hermes, llama3, mistral or generic (JSON answer, for templates without tools)",
    )
    reasoning_format: Literal["auto", "none"] = Field(
        "auto",
        description="auto: a leading <think>...</think> block (or the template's own markers) "
        "goes to reasoning_content; none: it stays in the content",
    )
    log_level: str = Field("info", description="debug, info, warning or error")
    tools: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="built-in tools served at /tools for agents and the web UI: 'all' or "
        "names (read_file, file_glob_search, grep_search, exec_shell_command, write_file, "
        "edit_file, get_info); they read, write and run anything the server's user can: "
        "local trusted users only (default: none)",
    )
    mcp_servers_config: str | None = Field(
        None,
        description='JSON file of MCP servers ({"mcpServers": {NAME: {"command", "args", '
        '"env"}}}) whose tools /tools serves as NAME_TOOL; they run with the server\'s '
        "privileges: trusted commands only",
    )
    mcp_servers_json: str | None = Field(
        None, description="the same MCP server definitions inline, as JSON"
    )

    ray: bool = Field(
        False,
        description="serve with Ray Serve: --replicas engine replicas (each loads the models "
        "once) behind an ingress and a prefix-cache-aware router, on --host/--port; RAY_ADDRESS "
        "joins a running Ray cluster, else Ray starts on this machine (needs "
        "pip install 'ferrousforge[ray]')",
    )
    replicas: int = Field(
        1,
        ge=1,
        le=1024,
        description="with --ray: engine replicas to start (the initial count when autoscaling); "
        "on this machine without --threads each gets cores / replicas threads",
    )
    min_replicas: int | None = Field(
        None,
        ge=0,
        description="with --ray: autoscale, never below this many replicas (default: 1 when "
        "--max-replicas is given)",
    )
    max_replicas: int | None = Field(
        None,
        ge=1,
        description="with --ray: autoscale, never above this many replicas (default: "
        "--replicas when --min-replicas is given)",
    )
    target_ongoing_requests: float | None = Field(
        None,
        gt=0,
        description="with --ray and autoscaling: requests running or waiting per replica "
        "that autoscaling aims for (default: --parallel)",
    )
    upscale_delay: float | None = Field(
        None,
        ge=0,
        le=86400,
        description="with --ray and autoscaling: seconds the load must call for more replicas "
        "before one is added (default: Ray Serve's, 30)",
    )
    downscale_delay: float | None = Field(
        None,
        ge=0,
        le=86400,
        description="with --ray and autoscaling: seconds the load must call for fewer replicas "
        "before one is removed (default: Ray Serve's, 600)",
    )

    @field_validator("api_key", "cors_origins", "tools", "rpc", "tensor_split", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        if isinstance(value, list):  # repeated flags, each possibly a comma list
            return [v for item in value for v in _split_commas(item)]
        return _split_commas(value)

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """The sampling fields this server sets for requests that leave them out."""
        out = {n: getattr(self, n) for n in SAMPLING_DEFAULTS if getattr(self, n) is not None}
        if out.get("seed") == -1:
            del out["seed"]  # llama.cpp's -1: a random seed per request, our default
        return out

    @property
    def hosts(self) -> list[str]:
        """The addresses to listen on."""
        return [h.strip() for h in self.host.split(",") if h.strip()]

    @model_validator(mode="after")
    def _key_file(self) -> ServerSettings:
        """--api-key-file's keys (one per line) join --api-key's, read once at startup."""
        if self.api_key_file:
            try:
                text = Path(self.api_key_file).expanduser().read_text(encoding="utf-8")
            except OSError as e:
                raise ValueError(f"api_key_file: cannot read it: {e.strerror}") from None
            self.api_key = [*self.api_key, *(ln.strip() for ln in text.splitlines() if ln.strip())]
        return self

    @model_validator(mode="after")
    def _replica_bounds(self) -> ServerSettings:
        if self.ray and len(self.hosts) > 1:  # Ray Serve's proxy binds one address
            raise ValueError("host: serve --ray listens on one address; give one --host")
        lo, hi = self.min_replicas, self.max_replicas
        if lo is None and hi is None:
            return self
        lo = 1 if lo is None else lo
        hi = max(self.replicas, lo) if hi is None else hi
        if lo > hi:
            raise ValueError("min_replicas: must not exceed max_replicas")
        if not lo <= self.replicas <= hi:
            raise ValueError("replicas: must lie between min_replicas and max_replicas")
        return self

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, value: list[str]) -> list[str]:
        from ferrousforge.tools_server.names import BUILTIN_TOOL_NAMES

        unknown = [n for n in value if n != "all" and n not in BUILTIN_TOOL_NAMES]
        if unknown:
            raise ValueError(
                f"tools: unknown tool {unknown[0]!r}; available: {', '.join(BUILTIN_TOOL_NAMES)}"
            )
        return value

    @model_validator(mode="after")
    def _mcp_config(self) -> ServerSettings:
        """A bad MCP config stops the server at startup, as llama-server's does."""
        from ferrousforge.tools_server.mcp_config import load_mcp_servers

        load_mcp_servers(self.mcp_servers_config, self.mcp_servers_json)
        return self

    @field_validator("memory_budget")
    @classmethod
    def _budget(cls, value: str | None) -> str | None:
        if value is not None:
            parse_size(value)  # a typo fails at startup, not at the first eviction
        return value

    @property
    def memory_budget_bytes(self) -> int | None:
        return None if self.memory_budget is None else parse_size(self.memory_budget)

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level: must be debug, info, warning or error")
        return value.lower()


class ConfigFile(BaseModel):
    """The TOML config file: a ``[server]`` table and any number of ``[[models]]``."""

    model_config = ConfigDict(extra="forbid")

    server: dict[str, Any] = Field(default_factory=dict)
    models: list[ModelSettings] = Field(default_factory=list)


def read_config(path: Path | str) -> ConfigFile:
    """Parse a TOML config file; relative model paths are taken from the file's folder."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    config = ConfigFile.model_validate(data)
    unknown = set(config.server) - set(ServerSettings.model_fields)
    if unknown:
        raise ValueError(f"{path}: unknown [server] keys: {', '.join(sorted(unknown))}")
    from ferrousforge.models.hub import parse_ref

    for m in config.models:
        p = Path(m.path).expanduser()
        p = p if p.is_absolute() else (path.parent / p)
        if p.exists() or parse_ref(m.path) is None:  # else a Hugging Face REPO[:QUANT]
            m.path = str(p)
    return config


def load_settings(
    cli: dict[str, Any] | None = None, config: ConfigFile | None = None
) -> ServerSettings:
    """Merge CLI values, env vars and the config file's [server] table (in that order)."""
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    from_env = ServerSettings().model_fields_set  # fields the environment set
    file_values = {k: v for k, v in (config.server if config else {}).items() if k not in from_env}
    return ServerSettings(**{**file_values, **cli})


# ---- CLI flags from the settings model ---------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    """int for ``int | None``, list for ``Annotated[list[str], ...]``."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0]
    return annotation


def _spellings(name: str, info: Any) -> tuple[list[str], list[str]]:
    """A field's flags: --its-name, then the extra spellings (and negations) it declares."""
    extra = info.json_schema_extra or {}
    return [_flag(name), *extra.get("flags", [])], list(extra.get("negative_flags", []))


def add_settings_arguments(
    parser: argparse.ArgumentParser, cls: type[BaseSettings] = ServerSettings
) -> None:
    """Add one flag per settings field; unset flags stay None so env and defaults apply."""
    for name, info in cls.model_fields.items():
        base = _base_type(info.annotation)
        default = info.get_default(call_default_factory=True)
        env = ENV_PREFIX + name.upper()
        help_text = f"{info.description or name} [env {env}; default {default!r}]"
        spellings, negative = _spellings(name, info)
        if typing.get_origin(base) is list:
            parser.add_argument(
                *spellings,
                dest=name,
                action="append",
                default=None,
                metavar=name.upper(),
                help=help_text,
            )
        elif base is bool:
            parser.add_argument(
                *spellings,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
            if negative:
                parser.add_argument(
                    *negative, dest=name, action="store_false", default=None, help=argparse.SUPPRESS
                )
        elif typing.get_origin(base) is Literal:
            choices = typing.get_args(base)
            parser.add_argument(
                *spellings,
                dest=name,
                choices=choices,
                # a bare `-fa`, as older llama-server scripts write it, means on
                nargs="?" if "on" in choices else None,
                const="on" if "on" in choices else None,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                *spellings,
                dest=name,
                type=base,
                default=None,
                metavar="N" if base is int else name.upper(),
                help=help_text,
            )


def settings_from_args(
    args: argparse.Namespace, cls: type[BaseSettings] = ServerSettings
) -> dict[str, Any]:
    """The flags the user actually gave, keyed by settings field."""
    return {n: getattr(args, n) for n in cls.model_fields if getattr(args, n, None) is not None}
