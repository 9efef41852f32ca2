"""The agent key registry (`agents.json`, mode 0600): who may drop jobs, and their limits.

File layout: ``{"version": 1, "agents": {"<agent_id>": {"secret": "...", "rate_per_minute": 60,
"max_images": 16, "formats": ["stl", ...], "max_resolution": 256, "allow_from": ["10.0.0.0/8"]}}}``
(`allow_from` is optional: the networks the HTTP API accepts the agent's requests from; empty
means anywhere). Secrets live only in
this file; nothing else (reprs, logs, errors) ever shows them.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from filelock import FileLock

from orfeas_pipelines.lib.export import MESH_FORMATS
from orfeas_pipelines.lib.home import write_json_atomic
from orfeas_pipelines.lib.intake.manifest import is_valid_id
from orfeas_pipelines.lib.intake.signing import new_secret

REGISTRY_MODE = 0o600


class RegistryError(ValueError):
    """A bad agent definition or an unreadable registry; one line, never a secret."""


@dataclass(frozen=True)
class AgentPolicy:
    """One agent's secret and permissions. The secret is left out of repr on purpose."""

    agent_id: str
    secret: str = field(repr=False)
    rate_per_minute: int = 60
    max_images: int = 16
    formats: tuple[str, ...] = MESH_FORMATS
    max_resolution: int = 256
    allow_from: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not is_valid_id(self.agent_id):
            raise RegistryError(
                f"agent id {self.agent_id!r} is not allowed: "
                "use 1-128 of A-Z a-z 0-9 . _ - starting with a letter or digit"
            )
        for name in ("rate_per_minute", "max_images", "max_resolution"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise RegistryError(f"agent {self.agent_id}: {name} must be a positive integer, not {value!r}")
        if not 16 <= self.max_resolution <= 1024:
            raise RegistryError(
                f"agent {self.agent_id}: max_resolution must be within 16..1024, not {self.max_resolution}"
            )
        formats = tuple(self.formats)
        unknown = [fmt for fmt in formats if fmt not in MESH_FORMATS]
        if not formats or unknown:
            raise RegistryError(
                f"agent {self.agent_id}: formats must be a non-empty subset of {', '.join(MESH_FORMATS)}"
                + (f" (unknown: {', '.join(map(str, unknown))})" if unknown else "")
            )
        if not isinstance(self.secret, str) or len(self.secret) < 16:
            raise RegistryError(f"agent {self.agent_id}: secret is missing or shorter than 16 characters")
        object.__setattr__(self, "formats", formats)
        object.__setattr__(self, "allow_from", tuple(_network(self.agent_id, text) for text in self.allow_from))

    def allows_address(self, address: str) -> bool:
        """Whether a request from `address` may act as this agent (its network allow-list)."""
        if not self.allow_from:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(network) for network in self.allow_from)

    def to_json(self) -> dict:
        payload = asdict(self)
        del payload["agent_id"]
        payload["formats"] = list(self.formats)
        payload["allow_from"] = list(self.allow_from)
        if not self.allow_from:
            del payload["allow_from"]
        return payload


@dataclass(frozen=True)
class AgentRegistry:
    agents: dict[str, AgentPolicy] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: Path) -> "AgentRegistry":
        """Read agents.json; a missing file is an empty registry."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls()
        try:
            data = json.loads(raw)
            entries = data["agents"]
            agents = {agent_id: _policy(agent_id, entry) for agent_id, entry in entries.items()}
        except RegistryError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError):
            expected = '{"version": 1, "agents": {...}}'
            raise RegistryError(f"{path}: not a valid agent registry (expected {expected})") from None
        return cls(agents)

    def get(self, agent_id: str) -> AgentPolicy | None:
        return self.agents.get(agent_id)

    def __len__(self) -> int:
        return len(self.agents)

    def __repr__(self) -> str:
        return f"AgentRegistry(agents={sorted(self.agents)})"

    def save(self, path: Path) -> None:
        agents = {agent_id: policy.to_json() for agent_id, policy in sorted(self.agents.items())}
        write_json_atomic(Path(path), {"version": 1, "agents": agents}, mode=REGISTRY_MODE)


def create_agent(
    path: Path,
    agent_id: str,
    rate_per_minute: int = 60,
    max_images: int = 16,
    formats: Iterable[str] = MESH_FORMATS,
    max_resolution: int = 256,
    allow_from: Iterable[str] = (),
) -> AgentPolicy:
    """Add an agent with a fresh secret; the caller shows the secret once. Ids are never reused."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    policy = AgentPolicy(
        agent_id, new_secret(), rate_per_minute, max_images, tuple(formats), max_resolution, tuple(allow_from)
    )
    with FileLock(str(path.with_name(f".{path.name}.lock"))):
        registry = AgentRegistry.load(path)
        if agent_id in registry.agents:
            raise RegistryError(f"agent {agent_id} already exists in {path}; pick another id")
        AgentRegistry({**registry.agents, agent_id: policy}).save(path)
    return policy


def _policy(agent_id: str, entry: dict) -> AgentPolicy:
    return AgentPolicy(
        agent_id=agent_id,
        secret=entry["secret"],
        rate_per_minute=entry.get("rate_per_minute", 60),
        max_images=entry.get("max_images", 16),
        formats=tuple(entry.get("formats", MESH_FORMATS)),
        max_resolution=entry.get("max_resolution", 256),
        allow_from=tuple(entry.get("allow_from", ())),
    )


def _network(agent_id: str, text: object) -> str:
    """A CIDR in its normal form (a bare address is a /32 or /128)."""
    try:
        return str(ipaddress.ip_network(str(text), strict=False))
    except ValueError:
        raise RegistryError(f"agent {agent_id}: allow_from entry {text!r} is not an address or CIDR network") from None
