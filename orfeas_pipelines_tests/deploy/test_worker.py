"""`orfeas worker` refuses, in one line, an instance that does not launch runs on Celery."""

from orfeas_pipelines.cli import main
from orfeas_pipelines.runner import install_instance_config


def test_worker_without_an_instance_config_names_the_missing_file(home, monkeypatch, capsys):
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster_home))
    assert main(["worker", "--home", str(home.root)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("orfeas worker: ") and "dagster.yaml: no instance config" in error
    assert len(error.splitlines()) == 1


def test_worker_on_an_instance_without_the_celery_launcher_says_so(home, monkeypatch, capsys):
    install_instance_config(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster_home))
    assert main(["worker", "--home", str(home.root)]) == 1
    assert "not dagster_celery's CeleryRunLauncher" in capsys.readouterr().err
