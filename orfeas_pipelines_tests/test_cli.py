"""The `orfeas` command as users and agents call it."""

import json
import os
import stat

import pytest
import trimesh

from orfeas_pipelines.cli import BENCH_SUITES, main
from orfeas_pipelines.lib.intake.registry import AgentRegistry


def test_generate_writes_each_format_and_prints_one_json_line_per_image(tmp_path, image_files, capsys):
    out = tmp_path / "out"
    code = main(["generate", *map(str, image_files[:2]), "--out", str(out), "--format", "stl,glb,obj,ply",
                 "--resolution", "48", "--batch-size", "2"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines] == [str(path) for path in image_files[:2]]
    for line, path in zip(lines, image_files):
        assert {os.path.basename(f) for f in line["files"]} == {f"{path.stem}.{fmt}" for fmt in ("stl", "glb", "obj", "ply")}
        assert line["watertight"] is True and line["vertices"] > 0 and line["faces"] > 0 and line["seconds"] > 0
        assert len(trimesh.load(out / f"{path.stem}.glb", force="mesh").faces) == line["faces"]


def test_generate_names_a_bad_image_keeps_going_and_exits_1(tmp_path, image_files, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = main(["generate", str(bad), str(image_files[0]), "--out", str(tmp_path / "out"), "--resolution", "48"])
    captured = capsys.readouterr()
    assert code == 1
    [error] = captured.err.strip().splitlines()
    assert "broken.png" in error and "not a decodable image" in error
    assert json.loads(captured.out)["image"] == str(image_files[0])
    assert (tmp_path / "out" / f"{image_files[0].stem}.stl").exists()


def test_unknown_format_is_a_one_line_usage_error(tmp_path, image_files, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(image_files[0]), "--out", str(tmp_path), "--format", "fbx"])
    assert exit_info.value.code == 2
    assert "unknown format" in capsys.readouterr().err


def test_create_key_prints_the_secret_once_on_the_last_line_and_keeps_the_registry_private(home, capsys):
    assert main(["agent", "create-key", "robot-7", "--home", str(home.root), "--rate", "5", "--formats", "stl,glb"]) == 0
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    policy = AgentRegistry.load(home.agents_file).get("robot-7")
    assert policy.secret == secret and policy.rate_per_minute == 5 and policy.formats == ("stl", "glb")
    assert stat.S_IMODE(home.agents_file.stat().st_mode) == 0o600
    assert main(["agent", "create-key", "robot-7", "--home", str(home.root)]) == 1
    assert secret not in capsys.readouterr().err


@pytest.mark.slow
def test_submit_process_status_end_to_end(home, image_files, capsys, tmp_path):
    main(["agent", "create-key", "bot", "--home", str(home.root)])
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    key_file = tmp_path / "bot.key"
    key_file.write_text(secret + "\n")

    assert main(["submit", *map(str, image_files[:2]), "--agent", "bot", "--key-file", str(key_file),
                 "--home", str(home.root), "--format", "stl,glb", "--resolution", "48"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert main(["status", job_id, "--home", str(home.root)]) == 2, "not yet picked up"

    assert main(["process", "--home", str(home.root)]) == 0
    assert f"{job_id}\tsucceeded" in capsys.readouterr().out
    assert main(["status", job_id, "--home", str(home.root)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "succeeded" and len(status["run_ids"]) == 1
    for image in status["images"]:
        for filename in image["outputs"].values():
            assert trimesh.load(home.outbox / job_id / filename, force="mesh").is_watertight

    assert main(["process", "--home", str(home.root)]) == 0, "nothing new is not an error"


def test_status_of_a_rejected_job_exits_1(home, image_files, capsys, monkeypatch):
    main(["agent", "create-key", "bot", "--formats", "stl", "--home", str(home.root)])
    monkeypatch.setenv("ORFEAS_AGENT_KEY", capsys.readouterr().out.splitlines()[-1])
    assert main(["submit", str(image_files[0]), "--agent", "bot", "--format", "glb", "--home", str(home.root)]) == 0
    job_id = capsys.readouterr().out.strip()
    main(["process", "--home", str(home.root)])
    capsys.readouterr()
    assert main(["status", job_id, "--home", str(home.root)]) == 1
    assert json.loads(capsys.readouterr().out)["state"] == "rejected"


def test_process_reports_a_failed_run_and_fails_its_images(home, agent, image_files, capsys, monkeypatch):
    from orfeas_pipelines.lib.generation.inflate import InflateGenerator
    from orfeas_pipelines_tests.conftest import submit_images

    def broken(self, requests):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(InflateGenerator, "generate", broken)
    [job_id] = submit_images(home, agent, image_files[:1])

    assert main(["process", "--home", str(home.root)]) == 0, "a failed job is still a terminal one"
    captured = capsys.readouterr()
    assert f"{job_id}\tfailed" in captured.out
    assert "run " in captured.err and " failed" in captured.err
    [image] = json.loads((home.outbox / job_id / "status.json").read_text())["images"]
    assert image["state"] == "failed" and image["error"].startswith("run ")


def fake_every_suite(monkeypatch, broken=()):
    """Replace each suite's `bench_<suite>` function; returns the calls, in order."""
    import importlib

    called = []
    for suite in BENCH_SUITES:
        def fake(suite=suite, **options):
            if suite in broken:
                raise RuntimeError("no disk left")
            called.append((suite, options))
            row = {"suite": suite, "phase": suite, "ratio": 2.0, "goal_met": True}
            return [row] if suite in ("generator", "api") else row

        monkeypatch.setattr(importlib.import_module(f"orfeas_pipelines.bench.{suite}"), f"bench_{suite}", fake)
    return called


def test_bench_without_a_suite_runs_every_suite_with_its_defaults(monkeypatch, capsys):
    called = fake_every_suite(monkeypatch)
    assert main(["bench"]) == 0
    out = capsys.readouterr().out
    calls_per_suite = {"pipeline": 2}  # its default runs two image counts
    assert [name for name, _ in called] == [name for name in BENCH_SUITES for _ in range(calls_per_suite.get(name, 1))]
    options = dict(called)
    assert options["intake"] == {"drops": 10_000} and options["runs"] == {"jobs": 32, "resolution": 64}
    assert [options for name, options in called if name == "pipeline"] == [
        {"images": 32, "resolution": 128, "repeats": 3}, {"images": 256, "resolution": 128, "repeats": 3}
    ]
    assert [line for line in out.splitlines() if line.startswith("# orfeas bench")] == [
        f"# orfeas bench {suite}" for suite in BENCH_SUITES
    ]


def test_bench_without_a_suite_fails_when_a_suite_fails(monkeypatch, capsys):
    fake_every_suite(monkeypatch, broken=("intake",))
    assert main(["bench"]) == 1
    assert "no disk left" in capsys.readouterr().err


def test_size_mm_sets_the_largest_side_of_generated_and_submitted_stls(home, image_files, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", str(image_files[0]), "--out", str(out), "--resolution", "48", "--size-mm", "42.5"]) == 0
    assert max(trimesh.load(out / f"{image_files[0].stem}.stl").extents) == pytest.approx(42.5)
    assert main(["generate", str(image_files[0]), "--out", str(out), "--resolution", "48", "--format", "stl,ply"]) == 0
    assert max(trimesh.load(out / f"{image_files[0].stem}.stl").extents) == pytest.approx(100)
    assert max(trimesh.load(out / f"{image_files[0].stem}.ply").extents) == pytest.approx(1)

    main(["agent", "create-key", "bot", "--home", str(home.root)])
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["submit", str(image_files[0]), "--agent", "bot", "--key", secret, "--home", str(home.root),
                 "--size-mm", "150"]) == 0
    job_id = capsys.readouterr().out.strip()
    assert json.loads((home.inbox / job_id / "job.json").read_text())["params"]["size_mm"] == 150


@pytest.mark.parametrize("size", ["0", "-3", "huge", "nan", "20000"])
def test_a_size_mm_that_is_not_a_sensible_number_of_millimetres_is_a_usage_error(tmp_path, image_files, capsys, size):
    with pytest.raises(SystemExit) as caught:
        main(["generate", str(image_files[0]), "--out", str(tmp_path), "--size-mm", size])
    assert caught.value.code == 2
    assert f"size {size!r} must be a number of millimetres from 1 to 10000" in capsys.readouterr().err


def test_submit_warns_about_key_on_the_command_line_and_takes_the_env_var_or_a_file(home, image_files, capsys,
                                                                                   monkeypatch, tmp_path):
    main(["agent", "create-key", "bot", "--home", str(home.root)])
    secret = capsys.readouterr().out.splitlines()[-1]
    submit = ["submit", str(image_files[0]), "--agent", "bot", "--home", str(home.root)]
    monkeypatch.delenv("ORFEAS_AGENT_KEY", raising=False)
    assert main(submit) == 1
    assert capsys.readouterr().err.strip().endswith("no agent key: give --key-file F or set ORFEAS_AGENT_KEY")
    assert main([*submit, "--key-file", str(tmp_path / "missing")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main([*submit, "--key", secret]) == 0
    assert "warning: --key shows the secret" in capsys.readouterr().err
    monkeypatch.setenv("ORFEAS_AGENT_KEY", secret)
    assert main(submit) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.strip()


def test_process_with_the_intake_lock_held_is_one_line(home, capsys, monkeypatch):
    from filelock import FileLock

    import orfeas_pipelines.lib.intake.inbox as inbox_module

    monkeypatch.setattr(inbox_module, "LOCK_TIMEOUT_SECONDS", 0.2)
    with FileLock(str(home.state / "intake.lock")):
        assert main(["process", "--home", str(home.root)]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("orfeas process: intake is busy")


def test_process_on_a_full_disk_is_one_line_and_the_next_process_finishes(home, agent, image_files, capsys,
                                                                          monkeypatch):
    import errno

    import orfeas_pipelines.lib.intake.inbox as inbox_module
    from orfeas_pipelines_tests.conftest import submit_images

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device", str(home.audit_log))

    [job_id] = submit_images(home, agent, image_files[:1])
    monkeypatch.setattr(inbox_module, "append_audit", full)
    assert main(["process", "--home", str(home.root)]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("orfeas process: intake tick stopped: No space left on device") and job_id not in line
    monkeypatch.undo()
    assert main(["process", "--home", str(home.root)]) == 0
    assert main(["status", job_id, "--home", str(home.root)]) == 0


def test_init_creates_the_home_its_instance_config_and_databases_once(tmp_path, capsys):
    root = tmp_path / "fresh"
    assert main(["init", "--home", str(root)]) == 0
    config = root / "dagster" / "dagster.yaml"
    assert f"base_dir: {(root / 'dagster').resolve()}/history/runs" in config.read_text()
    assert (root / "dagster" / "history" / "runs.db").is_file() and (root / "dagster" / "history" / "runs" / "index.db").is_file()
    assert (root / "inbox").is_dir() and (root / "outbox").is_dir()
    assert capsys.readouterr().out.strip() == f"{root}: DAGSTER_HOME={root / 'dagster'}"
    config.write_text(config.read_text() + "# edited by hand\n")
    assert main(["init", "--home", str(root)]) == 0
    assert config.read_text().endswith("# edited by hand\n")
