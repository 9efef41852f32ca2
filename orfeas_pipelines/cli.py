"""The `orfeas` command: direct generation, agent keys and jobs, processing, status, benchmarks.

Every subcommand imports what it needs when it runs, so `orfeas --help` and `orfeas status`
stay fast. Errors are one line on stderr naming the thing and the reason.
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

from orfeas_pipelines.lib.home import OrfeasHome

STATUS_EXIT_CODES = {"succeeded": 0, "failed": 1, "rejected": 1, "queued": 3, "running": 3}
BENCH_SUITES = ("generator", "intake", "runs", "pipeline", "api")
AGENT_KEY_ENV = "ORFEAS_AGENT_KEY"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, RuntimeError, FileNotFoundError, PermissionError) as error:
        print(f"orfeas {args.command}: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orfeas", description="Batched image-to-3D meshes on Dagster.")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="turn images into meshes directly, without Dagster")
    _image_options(generate)
    generate.add_argument("--out", required=True, type=Path)
    generate.add_argument("--backend", default="inflate", choices=["inflate", "hunyuan3d"])
    generate.add_argument("--model-path", help="Hunyuan3D-2 model root (local folder)")
    generate.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    generate.add_argument("--batch-size", default="auto", type=_batch_size, help="N or auto")
    generate.set_defaults(handler=_generate)

    demo = commands.add_parser("demo", help="sign and drop the sample images, process them, print a summary")
    _home_option(demo)
    demo.set_defaults(handler=_demo)

    agent = commands.add_parser("agent", help="manage agents").add_subparsers(dest="agent_command", required=True)
    create_key = agent.add_parser("create-key", help="create an agent with a fresh secret (printed once)")
    create_key.add_argument("agent_id")
    _home_option(create_key)
    create_key.add_argument("--rate", type=int, default=60, help="jobs per minute")
    create_key.add_argument("--max-images", type=int, default=16)
    create_key.add_argument("--formats", type=_formats, default="stl,glb,obj,ply")
    create_key.add_argument("--max-resolution", type=int, default=256)
    create_key.add_argument(
        "--allow-from", type=_networks, default=(), metavar="CIDR[,CIDR...]",
        help="networks the HTTP API accepts this agent's requests from (default: anywhere)",
    )
    create_key.set_defaults(handler=_create_key)

    submit = commands.add_parser("submit", help="write a signed job into inbox/")
    _image_options(submit)
    submit.add_argument("--agent", required=True)
    key = submit.add_mutually_exclusive_group()
    key.add_argument("--key", help="the secret itself (visible in `ps`; prefer --key-file or ORFEAS_AGENT_KEY)")
    key.add_argument("--key-file", type=Path, help="a file holding the secret (else $ORFEAS_AGENT_KEY)")
    _home_option(submit)
    submit.set_defaults(handler=_submit)

    init = commands.add_parser("init", help="create a home's folders and its Dagster instance config")
    _home_option(init)
    init.set_defaults(handler=_init)

    process = commands.add_parser("process", help="one intake tick and the batched runs it requests")
    _home_option(process)
    process.set_defaults(handler=_process)

    status = commands.add_parser("status", help="print a job's status.json")
    status.add_argument("job_id")
    _home_option(status)
    status.set_defaults(handler=_status)

    serve = commands.add_parser("serve", help="the HTTP agent API and /metrics")
    _home_option(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8750)
    serve.set_defaults(handler=_serve)
    worker = commands.add_parser("worker", help="a Celery GPU worker for the deployment's queued runs")
    worker.add_argument("--name", help="worker name (default: gpu<GPU>)")
    worker.add_argument("--gpu", help="the device it serves, as CUDA_VISIBLE_DEVICES (default: inherited)")
    _home_option(worker)
    worker.set_defaults(handler=_worker)
    retire = commands.add_parser("retire", help="archive and remove the image partitions of jobs settled long ago")
    retire.add_argument("--older-than", type=_days, default=7.0, metavar="DAYS", help="settled over DAYS days ago (default 7)")
    retire.add_argument("--keep-at-most", type=int, metavar="N", help="also the oldest settled jobs while over N would stay")
    _home_option(retire)
    retire.set_defaults(handler=_retire)

    bench = commands.add_parser("bench", help="benchmarks; ratios measured side by side in one run")
    bench.set_defaults(handler=_bench_all)
    suites = bench.add_subparsers(dest="suite", metavar=f"{{{','.join(BENCH_SUITES)}}}", help="one suite (default: all)")
    bench_generator = suites.add_parser("generator", help="batched vs sequential generation")
    bench_generator.add_argument("--backend", default="inflate", choices=["inflate", "hunyuan3d"])
    bench_generator.add_argument("--model-path")
    bench_generator.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    bench_generator.add_argument("--resolutions", default="64,128,256", type=_ints)
    bench_generator.add_argument("--images", default=8, type=int)
    bench_generator.set_defaults(handler=_bench_generator)
    bench_intake = suites.add_parser("intake", help="verification throughput with many signed drops")
    bench_intake.add_argument("--drops", default=10_000, type=int)
    bench_intake.set_defaults(handler=_bench_intake)
    bench_runs = suites.add_parser("runs", help="batched range runs vs one run per job")
    bench_runs.add_argument("--jobs", default=32, type=int)
    bench_runs.add_argument("--resolution", default=64, type=int)
    bench_runs.set_defaults(handler=_bench_runs)
    bench_pipeline = suites.add_parser("pipeline", help="generator alone vs orfeas process end to end")
    bench_pipeline.add_argument("--images", default="32,256", type=_ints, help="comma list of image counts")
    bench_pipeline.add_argument("--resolution", default=128, type=int)
    bench_pipeline.add_argument("--repeats", default=3, type=int, help="alternate timings; the best of each side counts")
    bench_pipeline.set_defaults(handler=_bench_pipeline)
    bench_api = suites.add_parser("api", help="HTTP API latency and throughput against a real orfeas serve")
    bench_api.add_argument("--seconds", default=10.0, type=float, help="per load phase")
    bench_api.add_argument("--streams", default=500, type=int, help="open SSE streams in the events phase")
    bench_api.add_argument(
        "--end-to-end", action="store_true",
        help="instead: POST to the succeeded event with the daemon running, one job at a time (minutes)",
    )
    bench_api.add_argument("--jobs", default=10, type=int, help="--end-to-end: jobs measured (after one warm-up)")
    bench_api.add_argument("--resolution", default=128, type=int, help="--end-to-end: the jobs' resolution")
    bench_api.add_argument("--port", type=int, help="--end-to-end: the API's port (default: a free one)")
    bench_api.add_argument("--hold", default=0.0, type=float, help="--end-to-end: seconds to stay up after the last job")
    bench_api.set_defaults(handler=_bench_api)
    return parser


def _image_options(parser: argparse.ArgumentParser) -> None:
    """What `generate` and `submit` both take: the images and how to turn them into meshes."""
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument("--format", default="stl", type=_formats, help="comma list of stl,glb,obj,ply")
    parser.add_argument("--resolution", default=128, type=int)
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--size-mm", type=_size_mm, help="largest side of the STL in millimetres (default 100)")


def _home_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, help="default: $ORFEAS_HOME, else ./orfeas_data")


def _formats(text: str) -> list[str]:
    from orfeas_pipelines.lib.export import MESH_FORMATS

    formats = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [fmt for fmt in formats if fmt not in MESH_FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(f"unknown format {unknown or text!r}: choose from {','.join(MESH_FORMATS)}")
    return formats


def _size_mm(text: str) -> int | float:
    """A positive number of millimetres, kept an int when it is one (it goes into job.json)."""
    from orfeas_pipelines.lib.intake.manifest import MAX_SIZE_MM, MIN_SIZE_MM

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not MIN_SIZE_MM <= value <= MAX_SIZE_MM:
        raise argparse.ArgumentTypeError(f"size {text!r} must be a number of millimetres from {MIN_SIZE_MM} to {MAX_SIZE_MM}")
    return int(value) if value.is_integer() else value


def _networks(text: str) -> tuple[str, ...]:
    import ipaddress

    networks = tuple(part.strip() for part in text.split(",") if part.strip())
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{network!r} is not an address or CIDR network") from None
    return networks


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not days > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of days")
    return days


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _batch_size(text: str) -> int | None:
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"batch size {text!r} must be a positive integer or 'auto'")
    return int(text)


def _generate(args: argparse.Namespace) -> int:
    from orfeas_pipelines.lib.batching import generate_in_batches
    from orfeas_pipelines.lib.export import DEFAULT_SIZE_MM, export_mesh
    from orfeas_pipelines.lib.generation.base import GenerationRequest, create_generator
    from orfeas_pipelines.lib.images import ImageError, load_image

    options = {}
    if args.backend == "hunyuan3d":
        options["model_path"] = args.model_path
    requests, failed = [], 0
    for path in args.images:
        try:
            image = load_image(path)
        except ImageError as error:
            print(f"orfeas generate: {path}: {error.reason}", file=sys.stderr)
            failed += 1
            continue
        requests.append(GenerationRequest(key=str(path), image=image, resolution=args.resolution, seed=args.seed))
    if requests:
        generator = create_generator(args.backend, device=args.device, **options)
        results = generate_in_batches(generator, requests, batch_size=args.batch_size)
    else:
        results = []
    for request, result in zip(requests, results):
        if not result.ok:
            print(f"orfeas generate: {result.error}", file=sys.stderr)
            failed += 1
            continue
        size_mm = DEFAULT_SIZE_MM if args.size_mm is None else args.size_mm
        files = export_mesh(result.mesh, args.out, Path(request.key).stem, args.format, size_mm=size_mm)
        line = {
            "image": request.key,
            "files": [str(path) for path in files.values()],
            "vertices": len(result.mesh.vertices),
            "faces": len(result.mesh.faces),
            "watertight": bool(result.mesh.is_watertight),
            "seconds": result.metrics.get("seconds"),
        }
        print(json.dumps(line), flush=True)
    return 1 if failed else 0


def _demo(args: argparse.Namespace) -> int:
    from orfeas_pipelines.demo import run_demo

    return run_demo(OrfeasHome.at(args.home).ensure())


def _create_key(args: argparse.Namespace) -> int:
    from orfeas_pipelines.lib.intake.registry import create_agent

    home = OrfeasHome.at(args.home).ensure()
    agent = create_agent(
        home.agents_file,
        args.agent_id,
        rate_per_minute=args.rate,
        max_images=args.max_images,
        formats=tuple(args.formats),
        max_resolution=args.max_resolution,
        allow_from=args.allow_from,
    )
    print(f"created agent {agent.agent_id} in {home.agents_file}; its secret follows and is not shown again")
    print(agent.secret)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from orfeas_pipelines.lib.intake.submit import write_job

    secret = _agent_secret(args)
    job_id = write_job(
        OrfeasHome.at(args.home).ensure(),
        args.images,
        args.agent,
        secret,
        formats=tuple(args.format),
        resolution=args.resolution,
        seed=args.seed,
        size_mm=args.size_mm,
    )
    print(job_id)
    return 0


def _agent_secret(args: argparse.Namespace) -> str:
    """The agent's secret from --key-file, $ORFEAS_AGENT_KEY or (with a warning) --key."""
    if args.key is not None:
        print(
            "orfeas submit: warning: --key shows the secret to every user of this machine (ps, shell history); "
            f"use --key-file F or {AGENT_KEY_ENV}",
            file=sys.stderr,
        )
        return args.key
    if args.key_file is not None:
        try:
            return args.key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"key file {args.key_file}: cannot be read ({getattr(error, 'strerror', None) or error})")
    secret = os.environ.get(AGENT_KEY_ENV, "").strip()
    if not secret:
        raise ValueError(f"no agent key: give --key-file F or set {AGENT_KEY_ENV}")
    return secret


def _init(args: argparse.Namespace) -> int:
    from orfeas_pipelines.runner import init_home

    home = OrfeasHome.at(args.home)
    print(f"{home.root}: DAGSTER_HOME={init_home(home).parent}")
    return 0


def _process(args: argparse.Namespace) -> int:
    from orfeas_pipelines.lib import outbox
    from orfeas_pipelines.runner import process_once

    home = OrfeasHome.at(args.home).ensure()
    report = process_once(home)
    states = {job_id: (outbox.read_status(home, job_id) or {}).get("state", "unknown") for job_id in report.job_ids}
    for job_id, state in states.items():
        print(f"{job_id}\t{state}")
    if not states:
        print(report.skip_reason or "nothing to do")
    for run_id in report.failed_runs:
        print(f"orfeas process: run {run_id} failed; see `dagster dev` or the run's logs", file=sys.stderr)
    unfinished = [job_id for job_id, state in states.items() if state not in ("succeeded", "failed", "rejected")]
    if unfinished:
        print(f"orfeas process: jobs not finished: {', '.join(unfinished)}", file=sys.stderr)
    return 1 if unfinished else 0


def _status(args: argparse.Namespace) -> int:
    from orfeas_pipelines.lib import outbox

    status = outbox.read_status(OrfeasHome.at(args.home), args.job_id)
    if status is None:
        print(f"orfeas status: {args.job_id}: unknown job", file=sys.stderr)
        return 2
    print(json.dumps(status, indent=2, sort_keys=True))
    return STATUS_EXIT_CODES.get(status.get("state"), 2)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from orfeas_pipelines.api import create_app

    home = OrfeasHome.at(args.home).ensure()
    print(f"orfeas serve: http://{args.host}:{args.port}/v1/health (home {home.root})", file=sys.stderr, flush=True)
    uvicorn.run(create_app(home), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from orfeas_pipelines.deploy.worker import run_worker

    home = OrfeasHome.at(args.home)
    os.environ["ORFEAS_HOME"] = str(home.root)
    os.environ.setdefault("DAGSTER_HOME", str(home.dagster_home))
    run_worker(name=args.name, gpu=args.gpu)
    return 0


def _retire(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from orfeas_pipelines.partitions import images_partitions
    from orfeas_pipelines.runner import open_instance
    from orfeas_pipelines.schedules.retire import retire_partitions

    home = OrfeasHome.at(args.home).ensure()
    with open_instance(home) as instance:
        retired = retire_partitions(instance, home, timedelta(days=args.older_than), keep_at_most=args.keep_at_most)
        left = len(instance.get_dynamic_partitions(images_partitions.name))
    jobs = len({image.job_id for image in retired})
    print(f"retired {len(retired)} image partitions of {jobs} jobs settled over {args.older_than:g} days ago; {left} remain")
    return 0


def _bench_all(args: argparse.Namespace) -> int:
    """Every suite with its defaults, one table each; fails if any suite failed."""
    code = 0
    for suite in BENCH_SUITES:
        print(f"# orfeas bench {suite}", flush=True)
        code = max(code, main(["bench", suite]))
    return code


def _bench_generator(args: argparse.Namespace) -> int:
    from orfeas_pipelines.bench.generator import bench_generator

    rows = bench_generator(
        backend=args.backend,
        resolutions=tuple(args.resolutions),
        images=args.images,
        device=args.device,
        model_path=args.model_path,
    )
    _print_rows(rows)
    return 0


def _bench_intake(args: argparse.Namespace) -> int:
    from orfeas_pipelines.bench.intake import bench_intake

    _print_rows([bench_intake(drops=args.drops)])
    return 0


def _bench_runs(args: argparse.Namespace) -> int:
    from orfeas_pipelines.bench.runs import bench_runs

    _print_rows([bench_runs(jobs=args.jobs, resolution=args.resolution)])
    return 0


def _bench_pipeline(args: argparse.Namespace) -> int:
    from orfeas_pipelines.bench.pipeline import bench_pipeline

    _print_rows([bench_pipeline(images=count, resolution=args.resolution, repeats=args.repeats) for count in args.images])
    return 0


def _bench_api(args: argparse.Namespace) -> int:
    from orfeas_pipelines.bench.api import bench_api, machine_line

    print(machine_line(), flush=True)
    if args.end_to_end:
        from orfeas_pipelines.bench.end_to_end import bench_end_to_end, sensor_interval_seconds, summary_rows

        print(f"inbox sensor interval: {sensor_interval_seconds()} s", flush=True)
        rows = bench_end_to_end(jobs=args.jobs, resolution=args.resolution, port=args.port, hold_seconds=args.hold)
        _print_rows(rows + summary_rows(rows))
        print(machine_line(), flush=True)
        return 0
    rows = bench_api(seconds=args.seconds, streams=args.streams)
    _print_rows(rows)
    print(machine_line(), flush=True)
    events_complete = all(row["goal_met"] for row in rows if row["phase"].startswith("events"))
    return 0 if events_complete else 1


def _print_rows(rows: list[dict]) -> None:
    import pandas as pd

    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    sys.exit(main())
