"""`charter.yaml`: the proxy's configuration, validated with pydantic; errors name file:line: field."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from charter.endpoints import base_url_problem
from charter.errors import CharterError
from charter.monitor.alerts import sink_problems
from charter.monitor.rules import MonitorSettings
from charter.yamlsource import Loc, format_loc, load_optional_mapping, problems_of, read_text, report

Action = Literal["block", "flag_only", "log_only"]
InputRole = Literal["system", "developer", "user", "tool", "function"]
INPUT_ROLES: tuple[InputRole, ...] = ("system", "developer", "user", "tool", "function")
DEFAULT_REFUSAL = "I can't help with that request."
MAX_CONFIG_BYTES = 1 << 20


class ConfigError(CharterError):
    """The proxy configuration file is missing, malformed or invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Timeouts(_Strict):
    connect: float = Field(10.0, gt=0)
    #: the longest wait for the next bytes from upstream (a stalled stream ends with an error)
    read: float = Field(60.0, gt=0)
    #: the whole upstream exchange, streaming included
    total: float = Field(600.0, gt=0)


class Upstream(_Strict):
    base_url: str | None = None
    #: name of the environment variable holding the upstream API key (the key never sits in config)
    api_key_env: str | None = None
    #: allowed model names; empty allows any
    models: list[str] = Field(default_factory=list)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    max_connections: int = Field(512, ge=1)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and (why := base_url_problem(v)):
            raise ValueError(why)
        return v.rstrip("/") if v else v

    def api_key(self) -> str | None:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return key.strip() if key is not None else None  # as charter.endpoints.bearer sends it


class Rate(_Strict):
    per_second: float = Field(20.0, gt=0)
    burst: int = Field(40, ge=1)


class ClientKey(_Strict):
    id: str = Field(min_length=1)
    #: hex sha256 of the key; generate with `charter serve-key`
    sha256: str
    rate: Rate | None = None
    #: an operator's key: it may also log in to the monitoring dashboard, which shows every client's
    #: stored traffic and can acknowledge alerts (a client key must not read other tenants' requests
    #: or silence the alerts about itself)
    dashboard: bool = False

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.lower()
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise ValueError("must be 64 hex characters (the sha256 of the key, never the key)")
        return v


class Limits(_Strict):
    max_body_bytes: int = Field(1_000_000, ge=1)
    #: seconds a client has to send its whole request body once its headers are in; a slower one is
    #: answered 408 (a client trickling a body would otherwise hold a connection and a task for ever)
    body_timeout_s: float = Field(30.0, gt=0, le=3600)
    max_messages: int = Field(256, ge=1)
    #: estimated prompt tokens (characters / 4)
    max_input_tokens: int = Field(32_000, ge=1)
    #: the largest max_tokens / max_completion_tokens a client may ask for
    max_output_tokens: int = Field(8_192, ge=1)
    rate: Rate = Field(default_factory=Rate)
    #: count each key's rate in ``events.db``, across every replica that shares it (one UPSERT a
    #: request); otherwise each replica counts its own, so N replicas let a key through at N times its rate
    shared_rate: bool = False


class CategoryPolicy(_Strict):
    action: Action = "block"
    refusal: str | None = None


class GuardSettings(_Strict):
    model: str | None = None
    #: tokens held back from the client until the exchange classifier has scored past them
    hold_back: int | None = Field(None, ge=0)
    #: let traffic through unchecked when the classifier errors (default: refuse)
    fail_open: bool = False
    #: request content the guard cannot read (images, audio, files): refuse it (400), or forward it unread
    unread_content: Literal["refuse", "allow"] = "refuse"
    #: request fields outside the OpenAI API (a provider's extensions: vLLM's ``documents``, ``chat_template``):
    #: ``read`` forwards them with their text read by the input check as operator text; ``refuse`` answers 400
    #: for any that holds more than a number
    extra_fields: Literal["read", "refuse"] = "read"
    #: the turns the input check reads as the request (earlier assistant turns never: the output monitor
    #: reads the whole conversation; tool definitions and other text outside the messages count as system text);
    #: [user] for an application whose system prompt, tool definitions and tool results it
    #: writes itself, where their sensitive-but-harmless text would otherwise be read as a request
    input_roles: list[InputRole] = Field(default_factory=lambda: list(INPUT_ROLES), min_length=1)

    @field_validator("input_roles")
    @classmethod
    def _reads_the_user(cls, v: list[str]) -> list[str]:
        if "user" not in v:
            raise ValueError("must include 'user'")
        return v
    default_action: Action = "block"
    refusal: str = DEFAULT_REFUSAL
    categories: dict[str, CategoryPolicy] = Field(default_factory=dict)
    #: score completed replies for wellbeing signals (flag-only, off the response path; ~0.3 ms a reply)
    wellbeing: bool = False
    #: wellbeing model directory (default: the packaged one)
    wellbeing_model: str | None = None

    def action(self, category: str | None) -> Action:
        pol = self.categories.get(category or "")
        return pol.action if pol else self.default_action

    def refusal_for(self, category: str | None) -> str:
        pol = self.categories.get(category or "")
        return pol.refusal if pol and pol.refusal else self.refusal


class EventsSettings(_Strict):
    #: the monitoring store (SQLAlchemy URL, e.g. sqlite:///charter.db); without it, a JSONL file at ``path``
    db: str | None = None
    path: str = "charter-events.jsonl"
    spill_path: str | None = None
    queue_size: int = Field(10_000, ge=1)
    #: how often a spill file left by a store outage is retried while no new events arrive
    replay_interval_s: float = Field(5.0, gt=0)
    #: what events keep of the conversation: none, hash, redacted or full (see charter.monitor.content)
    content: Literal["none", "hash", "redacted", "full"] = "none"
    #: deprecated: ``log_content: true`` is ``content: full``
    log_content: bool = False

    @property
    def content_policy(self) -> Literal["none", "hash", "redacted", "full"]:
        return "full" if self.log_content and self.content == "none" else self.content

    @property
    def spill(self) -> str:
        if self.spill_path:
            return self.spill_path
        if self.db and self.db.startswith("sqlite:///") and self.db != "sqlite:///:memory:":
            return self.db[len("sqlite:///"):] + ".spill.jsonl"
        return self.path + ".spill"


class ServerConfig(_Strict):
    upstream: Upstream = Field(default_factory=Upstream)
    keys: list[ClientKey] = Field(default_factory=list)
    #: require a client key even on loopback (always required elsewhere)
    require_keys: bool = False
    limits: Limits = Field(default_factory=Limits)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    events: EventsSettings = Field(default_factory=EventsSettings)
    #: misuse rules run in the background when ``events.db`` is set (see charter.monitor.rules)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)

    @property
    def operator_keys(self) -> list[ClientKey]:
        """The keys marked ``dashboard: true``: they may open the dashboard and read ``/metrics``."""
        return [k for k in self.keys if k.dashboard]

    @field_validator("keys")
    @classmethod
    def _unique(cls, v: list[ClientKey]) -> list[ClientKey]:
        ids = [k.id for k in v]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate key id {sorted(dup)[0]!r}")
        # one key, two entries: which id, rate and dashboard right it gets would depend on their order
        hashes = [k.sha256 for k in v]
        if len(set(hashes)) != len(hashes):
            i = next(i for i, h in enumerate(hashes) if h in hashes[:i])
            raise ValueError(f"key {v[i].id!r} has the same sha256 as key {v[hashes.index(hashes[i])].id!r}: one key, one entry")
        return v


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, config: ServerConfig) -> None:
    """Refuse to serve beyond loopback without client keys."""
    if not is_loopback(host) and not config.keys:
        raise ConfigError(
            f"refusing to bind {host}: client API keys are required beyond loopback; "
            "add 'keys' to the config (see 'charter serve-key')"
        )


def read_config_yaml(path: str | Path) -> tuple[yaml.Node | None, dict[str, Any]]:
    """(node tree, data) of a config file, read with a size bound; an empty file is ``(None, {})``."""
    return load_optional_mapping(read_text(Path(path), MAX_CONFIG_BYTES, ConfigError), str(path), ConfigError, "config")


def load_config(path: str | Path | None = None) -> ServerConfig:
    """Read and validate a config file (or defaults, with no path; an empty file also gives defaults)."""
    if path is None:
        return ServerConfig.model_validate({})
    name = str(path)
    root, data = read_config_yaml(path)
    try:
        return ServerConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(report(name, root, problems_of(e))) from None


def startup_problems(config: ServerConfig, classes: list[str] | None = None) -> list[tuple[Loc, str]]:
    """What the proxy cannot run with, beyond the file's own validity: ``guard.categories`` ids that
    are not restricted classes of the loaded guard (``classes``), and monitor sinks that cannot be
    built in this environment (an unset webhook variable) when the monitor runs."""
    out: list[tuple[Loc, str]] = []
    if classes is not None:
        valid = [str(c) for c in classes if c != "permitted"]
        for cid in config.guard.categories:
            if cid not in valid:
                out.append((("guard", "categories", cid), f"unknown category id {cid!r}; the guard's restricted "
                            f"categories are: {', '.join(valid)}"))
    if config.limits.shared_rate and not config.events.db:
        out.append((("limits", "shared_rate"), "needs events.db: the shared rate is counted in the monitoring store"))
    if config.events.db and config.monitor.interval_s > 0:
        out += [(("monitor", "sinks", *loc), msg) for loc, msg in sink_problems(config.monitor.sinks)]
    if config.events.db and (why := store_url_problem(config.events.db)):
        out.append((("events", "db"), why))
    return out


def store_url_problem(url: str) -> str | None:
    """Why ``url`` can never be a monitoring store (a malformed URL, an unknown database, a SQLite file
    that cannot exist), or None. A database that is merely down is no problem here: events spill to
    disk until it is back."""
    import sqlalchemy as sa

    from charter.endpoints import redact_url

    try:
        u = sa.engine.make_url(url)
        u.get_dialect()
    except Exception:
        return f"{redact_url(url)!r} is not a database URL Charter can use (sqlite:///FILE or postgresql+psycopg://...)"
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:") and not u.database.startswith("file:"):
        p = Path(u.database)
        if p.is_dir() or not p.parent.is_dir():
            return f"{u.database}: {'is a directory' if p.is_dir() else f'{p.parent} is not a directory'}"
    return None


def check_startup(config: ServerConfig, classes: list[str] | None = None, path: str | Path | None = None) -> None:
    """Raise ConfigError listing :func:`startup_problems` (``file:line: field`` when ``path`` is the config)."""
    problems = startup_problems(config, classes)
    if not problems:
        return
    if path is not None:
        root, _ = read_config_yaml(path)
        raise ConfigError(report(str(path), root, problems))
    raise ConfigError("\n".join(f"{format_loc(loc)}: {msg}" for loc, msg in problems))
