"""Good and bad inbox drops for tests: the corpus of everything an agent (or an attacker) may drop."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import stat
import struct
import time
import zlib
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from orfeas_pipelines.lib.home import OrfeasHome
from orfeas_pipelines.lib.intake.registry import AgentPolicy, create_agent
from orfeas_pipelines.lib.intake.signing import sign
from orfeas_pipelines.lib.intake.submit import build_manifest, write_job


def png_bytes(size: int = 16, color: tuple[int, int, int, int] = (200, 40, 40, 255)) -> bytes:
    """A small RGBA PNG: an opaque square of `color` on a transparent border."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    image.paste(color, (size // 4, size // 4, size - size // 4, size - size // 4))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb in 100 bytes)."""
    data = bytearray(png_bytes())
    ihdr_start = 8 + 8  # signature, then length + "IHDR"
    data[ihdr_start : ihdr_start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr_start + 13]))
    data[ihdr_start + 13 : ihdr_start + 17] = struct.pack(">I", crc)
    return bytes(data)


def jpeg_with_scans(size: int, extra_scans: int) -> bytes:
    """A flat progressive JPEG whose last (tiny) scan is repeated: cheap to write, slow to decode."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (90, 120, 200)).save(buffer, format="JPEG", progressive=True)
    data = buffer.getvalue()
    last_scan = data.rindex(b"\xff\xda")
    end = len(data) - 2
    return data[:end] + data[last_scan:end] * extra_scans + data[end:]


def costly_jpeg(size: int = 2048) -> bytes:
    """A noisy progressive photo: legitimate, and costly enough (about 0.1 s) to go to the decode worker."""
    pixels = np.random.default_rng(size).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", progressive=True, quality=90)
    return buffer.getvalue()


def png_with_chunks(png: bytes, count: int) -> bytes:
    """The PNG with `count` empty private chunks before its image data: valid, and slow to walk."""
    empty = b"\x00\x00\x00\x00prVt" + struct.pack(">I", zlib.crc32(b"prVt"))
    image_data = png.index(b"IDAT") - 4
    return png[:image_data] + empty * count + png[image_data:]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_home(root: Path) -> OrfeasHome:
    return OrfeasHome.at(root).ensure()


def make_agent(home: OrfeasHome, agent_id: str = "agent-a", **limits) -> AgentPolicy:
    return create_agent(home.agents_file, agent_id, **limits)


def signed_manifest(
    agent: AgentPolicy,
    job_id: str,
    files: dict[str, bytes],
    now: datetime,
    formats: tuple[str, ...] = ("stl",),
    resolution: int = 128,
    seed: int = 0,
    nonce: str | None = None,
    secret: str | None = None,
) -> dict:
    images = [(name, sha256_hex(data)) for name, data in files.items()]
    return build_manifest(job_id, agent.agent_id, images, secret or agent.secret, formats, resolution, seed, now, nonce)


def resign(manifest: dict, secret: str) -> dict:
    """The manifest with its signature recomputed (after a deliberate change)."""
    return {**manifest, "signature": sign(manifest, secret)}


def drop_folder(home: OrfeasHome, entry: str, manifest: dict | bytes | None, files: dict[str, bytes]) -> Path:
    """Write a job folder the way an agent does (staged, job.json last, renamed into inbox/)."""
    staging = home.inbox / f".{entry}.tmp"
    staging.mkdir()
    for name, data in files.items():
        (staging / name).write_bytes(data)
    if manifest is not None:
        raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        (staging / "job.json").write_bytes(raw)
    final = home.inbox / entry
    os.rename(staging, final)
    return final


def drop_good_job(
    home: OrfeasHome, agent: AgentPolicy, now: datetime, name: str = "chair.png", job_id: str | None = None, **params
) -> str:
    """A valid signed one-image job through the real agent-side writer; returns its job id."""
    source = home.root / "sources" / secrets.token_hex(4)
    source.mkdir(parents=True)
    image = source / name
    image.write_bytes(png_bytes())
    return write_job(home, [image], agent.agent_id, agent.secret, job_id=job_id, now=now, **params)


def tree_digest(path: Path) -> dict[str, str]:
    """Every entry under `path` (or `path` itself) → its sha256, or where a symlink points."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return {".": _entry_digest(path)}
    result = {}
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            full = Path(folder) / name
            if full.is_dir() and not full.is_symlink():
                continue
            result[str(full.relative_to(path))] = _entry_digest(full)
    return result


def _entry_digest(path: Path) -> str:
    if path.is_symlink():
        return "symlink:" + os.readlink(path)
    if not path.is_file():
        return f"special:{stat.S_IFMT(path.lstat().st_mode)}"
    return sha256_hex(path.read_bytes())


def drop_bad_corpus(home: OrfeasHome, agent: AgentPolicy, now: datetime, outside: Path) -> dict[str, str]:
    """One bad drop per rejection code (but replay and decode_too_slow) and the nasty ones; entry → code.

    `agent` must allow formats stl and obj only, 2 images per job and resolution up to 256.
    `outside` is a folder outside the home (the target of an escaping symlink).
    """
    good = png_bytes()
    expected: dict[str, str] = {}

    def job(entry: str, code: str, files: dict[str, bytes], manifest: dict | bytes | None = None, **kwargs) -> None:
        if manifest is None:
            manifest = signed_manifest(agent, entry, files, now, **kwargs)
        drop_folder(home, entry, manifest, files)
        expected[entry] = code

    job("bad-json", "bad_json", {"a.png": good}, b'{"version": 1, "job_id": ')
    job("bad-utf8", "bad_json", {"a.png": good}, b'{"version": 1, "job_id": "\xff"}')
    job("duplicate-key", "bad_json", {"a.png": good}, b'{"version": 1, "version": 1}')
    missing_nonce = signed_manifest(agent, "no-nonce", {"a.png": good}, now)
    del missing_nonce["nonce"]
    job("no-nonce", "bad_manifest", {"a.png": good}, resign(missing_nonce, agent.secret))
    extra_field = signed_manifest(agent, "extra-field", {"a.png": good}, now)
    extra_field["priority"] = "high"
    job("extra-field", "bad_manifest", {"a.png": good}, resign(extra_field, agent.secret))
    job("wrong-folder", "bad_manifest", {"a.png": good}, signed_manifest(agent, "other-id", {"a.png": good}, now))
    string_resolution = _with(agent, "string-resolution", good, now, params={"resolution": "128", "seed": 0})
    job("string-resolution", "bad_manifest", {"a.png": good}, string_resolution)
    version_two = signed_manifest(agent, "version-two", {"a.png": good}, now)
    job("version-two", "unknown_version", {"a.png": good}, resign({**version_two, "version": 2}, agent.secret))
    job("ghost-agent", "unknown_agent", {"a.png": good}, _with(agent, "ghost-agent", good, now, agent_id="ghost"))
    tampered = signed_manifest(agent, "tampered", {"a.png": good}, now)
    tampered["params"] = {"resolution": 64, "seed": 0}
    job("tampered", "bad_signature", {"a.png": good}, tampered)
    job("wrong-key", "bad_signature", {"a.png": good}, secret="0" * 64)
    job("stale", "stale", {"a.png": good}, signed_manifest(agent, "stale", {"a.png": good}, now - timedelta(hours=1)))
    future = signed_manifest(agent, "future", {"a.png": good}, now + timedelta(hours=1))
    job("future", "future", {"a.png": good}, future)
    job("glb-format", "format_not_allowed", {"a.png": good}, formats=("stl", "glb"))
    job("high-resolution", "resolution_not_allowed", {"a.png": good}, resolution=512)
    three = {"a.png": good, "b.png": good, "c.png": good}
    job("three-images", "too_many_images", three)
    missing = signed_manifest(agent, "image-missing", {"a.png": good}, now)
    job("image-missing", "image_missing", {}, missing)
    mismatch = signed_manifest(agent, "hash-mismatch", {"a.png": good}, now)
    job("hash-mismatch", "hash_mismatch", {"a.png": png_bytes(color=(0, 0, 255, 255))}, mismatch)
    job("text-file", "not_an_image", {"a.png": b"hello, not an image\n"})
    job("truncated-png", "not_an_image", {"a.png": good[: len(good) // 2]})
    job("zero-bytes", "not_an_image", {"a.png": b""})
    job("bomb-header", "too_large", {"a.png": png_claiming_size(40000, 40000)})
    job("many-scans", "too_many_scans", {"a.jpg": jpeg_with_scans(64, 100_000)})
    huge = signed_manifest(agent, "huge-manifest", {"a.png": good}, now)
    huge_raw = json.dumps({**huge, "padding": "x" * (12 * 1024 * 1024)}).encode()
    job("huge-manifest", "too_large", {"a.png": good}, huge_raw)
    dotdot = signed_manifest(agent, "dotdot", {"../escape.png": good}, now)
    job("dotdot", "path_not_allowed", {"a.png": good}, dotdot)
    absolute = signed_manifest(agent, "absolute", {"/etc/passwd": b"root"}, now)
    job("absolute", "path_not_allowed", {"a.png": good}, absolute)

    secret_image = outside / "secret.png"
    secret_image.write_bytes(good)
    link_job = home.inbox / ".symlink-out.tmp"
    link_job.mkdir()
    (link_job / "a.png").symlink_to(secret_image)
    (link_job / "job.json").write_text(json.dumps(signed_manifest(agent, "symlink-out", {"a.png": good}, now)))
    os.rename(link_job, home.inbox / "symlink-out")
    expected["symlink-out"] = "path_not_allowed"

    fifo_files = {"a.png": good}
    fifo_job = home.inbox / ".fifo-image.tmp"
    fifo_job.mkdir()
    os.mkfifo(fifo_job / "a.png")
    (fifo_job / "job.json").write_text(json.dumps(signed_manifest(agent, "fifo-image", fifo_files, now)))
    os.rename(fifo_job, home.inbox / "fifo-image")
    expected["fifo-image"] = "path_not_allowed"

    (home.inbox / "stray.txt").write_text("not a job\n")
    expected["stray.txt"] = "not_a_job"
    (home.inbox / "stray-link").symlink_to(outside)
    expected["stray-link"] = "not_a_job"
    age_entries(home.inbox, expected)
    return expected


def age_entries(folder: Path, names, seconds: float = 3600.0) -> None:
    """Date the entries and everything in them `seconds` back: drops no longer being written."""
    when = time.time() - seconds
    for name in names:
        root = Path(folder) / name
        paths = [root] if root.is_symlink() or not root.is_dir() else [root, *root.iterdir()]
        for path in paths:
            os.utime(path, (when, when), follow_symlinks=False)


def drop_replays(home: OrfeasHome, agent: AgentPolicy, now: datetime, accepted_job_id: str) -> dict[str, str]:
    """Replays of an accepted job: its nonce under a new id, and its id with a fresh nonce."""
    accepted = json.loads((home.jobs / accepted_job_id / "job.json").read_text())
    good = png_bytes()
    expected = {}
    replayed_nonce = signed_manifest(agent, "replayed-nonce", {"a.png": good}, now, nonce=accepted["nonce"])
    drop_folder(home, "replayed-nonce", replayed_nonce, {"a.png": good})
    expected["replayed-nonce"] = "replay"
    reused_id = signed_manifest(agent, accepted_job_id, {"a.png": good}, now)
    drop_folder(home, accepted_job_id, reused_id, {"a.png": good})
    expected[accepted_job_id] = "replay"
    return expected


def _with(agent: AgentPolicy, job_id: str, image: bytes, now: datetime, **changes) -> dict:
    """A manifest with `changes` applied and signed again, so only the change is wrong."""
    manifest = signed_manifest(agent, job_id, {"a.png": image}, now)
    return resign({**manifest, **changes}, agent.secret)
