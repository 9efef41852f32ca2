"""The `orfeas` command as users and agents call it."""

import json
import os
import stat

import pytest
import trimesh

from orfeas_pipelines.cli import main
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


def test_status_of_a_rejected_job_exits_1(home, image_files, capsys):
    main(["agent", "create-key", "bot", "--home", str(home.root)])
    capsys.readouterr()
    assert main(["submit", str(image_files[0]), "--agent", "bot", "--key", "f" * 64, "--home", str(home.root)]) == 0
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


def test_bench_without_a_suite_runs_every_suite_with_its_defaults(monkeypatch, capsys):
    from orfeas_pipelines.bench import api, generator, intake, runs

    called = []

    def fake(name):
        def bench(**options):
            called.append((name, options))
            row = {"suite": name, "phase": name, "ratio": 2.0, "goal_met": True}
            return [row] if name in ("generator", "api") else row

        return bench

    monkeypatch.setattr(generator, "bench_generator", fake("generator"))
    monkeypatch.setattr(intake, "bench_intake", fake("intake"))
    monkeypatch.setattr(runs, "bench_runs", fake("runs"))
    monkeypatch.setattr(api, "bench_api", fake("api"))
    assert main(["bench"]) == 0
    out = capsys.readouterr().out
    assert [name for name, _ in called] == ["generator", "intake", "runs", "api"]
    assert called[1][1] == {"drops": 10_000} and called[2][1] == {"jobs": 32, "resolution": 64}
    assert [line for line in out.splitlines() if line.startswith("# orfeas bench")] == [
        "# orfeas bench generator", "# orfeas bench intake", "# orfeas bench runs", "# orfeas bench api"
    ]


def test_bench_without_a_suite_fails_when_a_suite_fails(monkeypatch, capsys):
    from orfeas_pipelines.bench import api, generator, intake, runs

    def broken(**options):
        raise RuntimeError("no disk left")

    monkeypatch.setattr(generator, "bench_generator", lambda **options: [{"ratio": 2.0}])
    monkeypatch.setattr(intake, "bench_intake", broken)
    monkeypatch.setattr(runs, "bench_runs", lambda **options: {"ratio": 2.0})
    monkeypatch.setattr(api, "bench_api", lambda **options: [{"phase": "status", "goal_met": True}])
    assert main(["bench"]) == 1
    assert "no disk left" in capsys.readouterr().err
