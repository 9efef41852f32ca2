"""`orfeas demo`: the bundled samples go through the whole agent path and come back as meshes.

The demo signs each sample as a job of a `demo` agent, drops it in the inbox, runs one
intake tick of the real sensor and the batched range run it requests, then checks every
delivered mesh and prints a summary table.
"""

import sys

from orfeas_pipelines.lib.home import OrfeasHome

DEMO_AGENT = "demo"
DEMO_FORMATS = ("stl", "glb", "obj", "ply")


def run_demo(home: OrfeasHome, out=sys.stdout) -> int:
    """Exit code 0 only if every sample produced a valid mesh in the outbox."""
    import pandas as pd
    import trimesh

    from orfeas_pipelines.lib import outbox
    from orfeas_pipelines.lib.intake.registry import AgentRegistry, create_agent
    from orfeas_pipelines.lib.intake.submit import write_job
    from orfeas_pipelines.lib.meshes import mesh_problems
    from orfeas_pipelines.lib.samples import sample_image_paths
    from orfeas_pipelines.runner import process_once

    agent = AgentRegistry.load(home.agents_file).get(DEMO_AGENT) or create_agent(
        home.agents_file, DEMO_AGENT, rate_per_minute=600, formats=DEMO_FORMATS
    )
    samples = sample_image_paths()
    job_ids = [
        write_job(home, [path], agent.agent_id, agent.secret, formats=DEMO_FORMATS, resolution=128, seed=0)
        for path in samples
    ]
    report = process_once(home)
    rows, all_valid = [], True
    for path, job_id in zip(samples, job_ids):
        status = outbox.read_status(home, job_id) or {}
        image = (status.get("images") or [{}])[0]
        problems = ["not delivered"]
        if image.get("state") == "succeeded":
            mesh = trimesh.load(home.outbox / job_id / image["outputs"]["ply"], force="mesh")
            problems = mesh_problems(mesh)
        all_valid &= not problems
        rows.append(
            {
                "sample": path.name,
                "job": job_id,
                "state": status.get("state", "unknown"),
                "vertices": image.get("metrics", {}).get("vertices"),
                "faces": image.get("metrics", {}).get("faces"),
                "valid": not problems,
                "problem": "; ".join(problems) or image.get("error", ""),
            }
        )
    print(pd.DataFrame(rows).to_string(index=False), file=out)
    print(f"runs: {', '.join(report.run_ids) or 'none'}; outbox: {home.outbox}", file=out)
    print("demo succeeded" if all_valid else "demo FAILED: some samples produced no valid mesh", file=out)
    return 0 if all_valid else 1
