"""The model catalog's scan: how long ``easel.shared.catalog.scan`` takes over a large
AUTOMATIC1111 models folder, cold and rescanned.

    python -m bench.catalog_scan --files 2000 --rounds 3

Builds, in a temporary folder, an A1111 ``models`` folder (and ``embeddings`` beside it)
of ``--files`` files whose headers are those of real files (``bench.model_headers``): of
every 100, 5 SD 1.x checkpoints (1,131 tensors), 2 SDXL checkpoints (2,515), 1 VAE (248),
60 kohya SD 1.x LoRAs (792), 10 kohya SDXL LoRAs (2,958) and 22 embeddings (1). Each file
carries its own metadata (training notes, as kohya's ``ss_*`` keys), so no two headers
are alike and none is classified from another's. Weights are zeros, shrunk (see
``bench.model_headers``); a scan reads headers only, so their size does not matter.

Each round times a cold scan (no previous catalog: every header read and classified), a
rescan of the unchanged folder (nothing read) and a rescan after 1 % of the files were
rewritten. The files were just written, so the cold scan reads them from the page cache;
a first scan after a reboot also waits for the disk. Prints one JSON object: the files
and header bytes by kind, each round's seconds, their medians and the scan's counters;
progress goes to stderr.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._stack import Timer, bench_parser, emit, machine, progress
from bench.model_headers import SafetensorsTemplate, checkpoint, embedding, lora, vae

MIX: tuple[tuple[str, str, int], ...] = (
    # (label, folder under the webui, files per 100)
    ("sd1_checkpoint", "models/Stable-diffusion", 5),
    ("sdxl_checkpoint", "models/Stable-diffusion/xl", 2),
    ("vae", "models/VAE", 1),
    ("sd1_lora", "models/Lora", 60),
    ("sdxl_lora", "models/Lora/xl", 10),
    ("embedding", "embeddings", 22),
)


def templates() -> dict[str, SafetensorsTemplate]:
    """One header template per kind of file in ``MIX``."""
    return {
        "sd1_checkpoint": SafetensorsTemplate(checkpoint("v1")),
        "sdxl_checkpoint": SafetensorsTemplate(checkpoint("xl_base")),
        "vae": SafetensorsTemplate(vae("")),
        "sd1_lora": SafetensorsTemplate(lora("sd1")),
        "sdxl_lora": SafetensorsTemplate(lora("sdxl")),
        "embedding": SafetensorsTemplate(embedding()),
    }


def plan(count: int) -> list[tuple[str, str]]:
    """(label, folder) of each of ``count`` files, in ``MIX``'s proportions."""
    files: list[tuple[str, str]] = []
    for index in range(count):
        slot = index % 100
        for label, folder, share in MIX:
            if slot < share:
                files.append((label, folder))
                break
            slot -= share
    return files


def metadata(label: str, index: int) -> dict[str, str]:
    """Per-file metadata of about a kilobyte, as trainers write it."""
    tags = ", ".join(f'"tag {index}-{n}": {n * 7 % 31}' for n in range(40))
    return {
        "ss_output_name": f"{label}-{index}",
        "ss_training_started_at": str(1_700_000_000 + index),
        "ss_network_dim": "8",
        "ss_network_alpha": "4",
        "ss_tag_frequency": "{" + tags + "}",
    }


def build(webui: Path, count: int) -> dict[str, dict[str, int]]:
    """Write ``count`` files under ``webui``; files and header bytes by kind."""
    made = templates()
    totals = {label: {"files": 0, "tensors_each": made[label].count} for label, *_ in MIX}
    for index, (label, folder) in enumerate(plan(count)):
        path = webui / folder / f"{label}-{index:05d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(made[label].render(metadata(label, index)))
        totals[label]["files"] += 1
    return {label: figures for label, figures in totals.items() if figures["files"]}


def touch_some(webui: Path, share: float, note: str) -> int:
    """Rewrite ``share`` of the files with new metadata (``note``: a new size, mtime and
    header); how many."""
    made = templates()
    files = sorted(webui.rglob("*.safetensors"))
    changed = files[:: max(1, round(1 / share))] if share else []
    for number, path in enumerate(changed):
        label = path.stem.rsplit("-", 1)[0]
        path.write_bytes(made[label].render({**metadata(label, number), "ss_note": note}))
    return len(changed)


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the reading processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(webui: Path, rounds: int, processes: int | None) -> dict[str, Any]:
    from easel.shared.catalog import scan

    models = webui / "models"
    cold: list[float] = []
    cold_cpu: list[float] = []
    warm: list[float] = []
    changed: list[float] = []
    counters: dict[str, Any] = {}
    for number in range(rounds):
        cpu = cpu_seconds()
        with Timer() as timer:
            catalog = scan([models], processes=processes)
        cold.append(timer.seconds)
        cold_cpu.append(cpu_seconds() - cpu)
        counters["cold"] = catalog.stats.__dict__
        with Timer() as timer:
            again = scan([models], catalog, processes=processes)
        warm.append(timer.seconds)
        counters["warm"] = again.stats.__dict__
        rewritten = touch_some(webui, 0.01, f"retrained {number}")
        with Timer() as timer:
            after = scan([models], again, processes=processes)
        changed.append(timer.seconds)
        counters["changed"] = {**after.stats.__dict__, "rewritten": rewritten}
        counters["entries"] = len(after.entries)
        counters["unavailable"] = sum(not e.available for e in after.entries)
        times = f"cold {cold[-1]:.2f} s, warm {warm[-1]:.3f} s, 1% changed {changed[-1]:.2f} s"
        progress(f"round {number + 1}: {times}")
    return {
        "cold_seconds": [round(s, 3) for s in cold],
        "warm_seconds": [round(s, 3) for s in warm],
        "changed_seconds": [round(s, 3) for s in changed],
        "cold_median_seconds": round(statistics.median(cold), 3),
        "cold_cpu_seconds": [round(s, 3) for s in cold_cpu],
        "warm_median_seconds": round(statistics.median(warm), 4),
        "changed_median_seconds": round(statistics.median(changed), 3),
        "counters": counters,
    }


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(None, __doc__)
    parser.add_argument("--files", type=int, default=2000, help="model files in the folder")
    parser.add_argument("--rounds", type=int, default=3, help="cold scan + rescans, this many times")
    parser.add_argument("--target", type=float, default=5.0, help="seconds a cold scan should stay under")
    parser.add_argument(
        "--processes", type=int, default=None, help="reading processes (default: scan's choice)"
    )
    args = parser.parse_args(argv)
    if args.files < 1 or args.rounds < 1:
        parser.error("--files and --rounds must be at least 1")
    load = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="easel-bench-catalog-") as tmp:
        webui = Path(tmp) / "webui"
        progress(f"writing {args.files} model files")
        with Timer() as timer:
            kinds = build(webui, args.files)
        header_bytes = sum(p.stat().st_size for p in webui.rglob("*.safetensors"))
        progress(f"wrote them in {timer.seconds:.1f} s; scanning")
        figures = measure(webui, args.rounds, args.processes)
    emit(
        {
            "benchmark": "catalog_scan",
            "files": args.files,
            "processes": args.processes,
            "kinds": kinds,
            "bytes_on_disk": header_bytes,
            "build_seconds": round(timer.seconds, 2),
            **figures,
            "target_seconds": args.target,
            "cold_under_target": figures["cold_median_seconds"] < args.target,
            "seconds_total": round(time.monotonic() - started, 1),
            "machine": machine(load),
        }
    )


if __name__ == "__main__":
    main()
