import json
import stat

import pytest

from orfeas_pipelines.lib.intake.registry import AgentPolicy, AgentRegistry, RegistryError, create_agent


def test_create_agent_writes_a_private_registry_that_loads_back(tmp_path):
    path = tmp_path / "agents.json"
    policy = create_agent(path, "agent-a", rate_per_minute=5, max_images=3, formats=("stl", "glb"), max_resolution=128)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = AgentRegistry.load(path).get("agent-a")
    assert loaded == policy
    limits = (loaded.rate_per_minute, loaded.max_images, loaded.formats, loaded.max_resolution)
    assert limits == (5, 3, ("stl", "glb"), 128)
    assert len(policy.secret) == 64


def test_a_second_agent_keeps_the_first_and_gets_its_own_secret(tmp_path):
    path = tmp_path / "agents.json"
    first = create_agent(path, "agent-a")
    second = create_agent(path, "agent-b")
    registry = AgentRegistry.load(path)
    assert registry.get("agent-a") == first and registry.get("agent-b") == second
    assert first.secret != second.secret
    assert len(registry) == 2 and registry.get("agent-c") is None


def test_an_existing_agent_id_is_an_error(tmp_path):
    path = tmp_path / "agents.json"
    create_agent(path, "agent-a")
    with pytest.raises(RegistryError, match="agent-a already exists"):
        create_agent(path, "agent-a")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"agent_id": "bad id"}, "not allowed"),
        ({"agent_id": "../x"}, "not allowed"),
        ({"rate_per_minute": 0}, "rate_per_minute"),
        ({"max_images": -1}, "max_images"),
        ({"formats": ()}, "formats"),
        ({"formats": ("stl", "fbx")}, "fbx"),
        ({"max_resolution": 4096}, "max_resolution"),
    ],
)
def test_bad_agent_definitions_are_refused_with_a_clear_message(tmp_path, kwargs, fragment):
    arguments = {"agent_id": "agent-a", **kwargs}
    with pytest.raises(RegistryError, match=fragment.replace(".", r"\.")):
        create_agent(tmp_path / "agents.json", **arguments)
    assert not (tmp_path / "agents.json").exists()


def test_missing_registry_is_empty_and_corrupt_one_is_an_error(tmp_path):
    assert len(AgentRegistry.load(tmp_path / "absent.json")) == 0
    corrupt = tmp_path / "agents.json"
    corrupt.write_text('{"agents": [1, 2]}')
    with pytest.raises(RegistryError, match="not a valid agent registry"):
        AgentRegistry.load(corrupt)


def test_secrets_never_show_in_reprs_or_errors(tmp_path):
    path = tmp_path / "agents.json"
    policy = create_agent(path, "agent-a")
    registry = AgentRegistry.load(path)
    assert policy.secret not in repr(policy) and policy.secret not in str(policy)
    assert policy.secret not in repr(registry)
    with pytest.raises(RegistryError) as caught:
        AgentPolicy("agent-a", policy.secret, rate_per_minute=0)
    assert policy.secret not in str(caught.value)
    assert json.loads(path.read_text())["agents"]["agent-a"]["secret"] == policy.secret


def test_allow_from_is_kept_normalised_and_checked(tmp_path):
    path = tmp_path / "agents.json"
    create_agent(path, "fenced", allow_from=("192.168.1.7", "10.0.0.0/8"))
    create_agent(path, "open")
    registry = AgentRegistry.load(path)
    assert registry.get("fenced").allow_from == ("192.168.1.7/32", "10.0.0.0/8")
    assert registry.get("fenced").allows_address("10.9.9.9") and not registry.get("fenced").allows_address("192.168.1.8")
    assert registry.get("open").allows_address("203.0.113.5")
    assert "allow_from" not in json.loads(path.read_text())["agents"]["open"]
    with pytest.raises(RegistryError, match="allow_from entry 'nowhere'"):
        create_agent(path, "broken", allow_from=("nowhere",))
