"""Fixtures for the Dagster-layer tests: a temporary home with an agent, and a test instance."""

from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from orfeas_pipelines.lib.home import OrfeasHome
from orfeas_pipelines.lib.intake.registry import AgentPolicy, create_agent
from orfeas_pipelines.lib.intake.submit import write_job
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines.runner import ONE_PLANNED_EVENT_PER_RUN, apply_sensor_result, tick_sensor
from orfeas_pipelines.sensors.intake import IntakeSettings, inbox_sensor
from orfeas_pipelines_tests import shapes
from orfeas_pipelines_tests.lib.generation.tiny_hunyuan3d import build_tiny_hunyuan3d


@pytest.fixture(autouse=True)
def one_planned_event_per_run(monkeypatch):
    """Runs are created as `orfeas process` and `make dev` create them."""
    monkeypatch.setenv(ONE_PLANNED_EVENT_PER_RUN, "1")


@pytest.fixture(scope="session")
def tiny_hunyuan3d_model_path(tmp_path_factory) -> str:
    """The root of a tiny randomly initialised Hunyuan3D-2 model (holds hunyuan3d-dit-v2-0/)."""
    return str(build_tiny_hunyuan3d(tmp_path_factory.mktemp("hunyuan3d") / "Hunyuan3D-2"))


@pytest.fixture
def home(tmp_path, monkeypatch) -> OrfeasHome:
    home = OrfeasHome.at(tmp_path / "home").ensure()
    monkeypatch.setenv("ORFEAS_HOME", str(home.root))
    return home


@pytest.fixture
def agent(home) -> AgentPolicy:
    return create_agent(home.agents_file, "tester", rate_per_minute=10_000, max_images=64)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def image_files(tmp_path) -> list[Path]:
    """Four small shapes, saved as PNGs an agent could submit."""
    folder = tmp_path / "images"
    folder.mkdir()
    drawn = {
        "star.png": shapes.star(),
        "ring.png": shapes.ring(),
        "vase.png": shapes.vase(),
        "disk.png": shapes.disk(),
    }
    paths = []
    for name, pixels in drawn.items():
        Image.fromarray(pixels).save(folder / name)
        paths.append(folder / name)
    return paths


def submit_images(home: OrfeasHome, agent: AgentPolicy, paths: list[Path], per_job: int = 1, **params) -> list[str]:
    """Signed jobs of `per_job` images each, dropped in the inbox; returns the job ids."""
    params.setdefault("resolution", 48)
    params.setdefault("formats", ("stl", "ply"))
    return [
        write_job(home, paths[start : start + per_job], agent.agent_id, agent.secret, **params)
        for start in range(0, len(paths), per_job)
    ]


def register_pending(home: OrfeasHome, instance: dg.DagsterInstance, **settings) -> dg.SensorResult:
    """One tick of the real inbox sensor with its stored cursor, applied as the daemon applies it."""
    resources = {"orfeas_home": OrfeasHomeResource(root=str(home.root)), "intake_settings": IntakeSettings(**settings)}
    result = tick_sensor(instance, inbox_sensor.name, resources)
    apply_sensor_result(instance, inbox_sensor.name, result)
    return result


def start_images(home: OrfeasHome, job_id: str, run_id: str) -> None:
    """What a run reports when it starts on a job: every image running."""
    from orfeas_pipelines.lib.outbox import ImageUpdate, apply_updates, read_status

    images = read_status(home, job_id)["images"]
    apply_updates(home, job_id, run_id, [ImageUpdate(image["file"], "running") for image in images])


def settle_image(home: OrfeasHome, job_id: str, file: str, state: str, run_id: str = "run-1", **fields) -> None:
    """What a run reports for one image: delivered (`outputs=`) or failed (`error=`)."""
    from orfeas_pipelines.lib.outbox import ImageUpdate, apply_updates

    apply_updates(home, job_id, run_id, [ImageUpdate(file, state, **fields)])
