"""Speed and memory in one run: our loop against the original pipeline, our grid against the
tutorial way, and both against what this machine's matrix multiplies allow.

    python benchmarks/bench.py --data-dir /tmp/data/cifar10 [--out bench.json]

Sections (4 to 9 minutes on 2 cores, as the machine's speed varies; most of it the tutorial
way's grid):
  epoch      one training epoch (45k images, batch 64) through our loop and through the original
             pipeline (per-sample PIL -> ToTensor -> Normalize in a DataLoader), same threads;
             beside ours, the floor: the MLP's FLOPs per sample at the machine's matmul peak
  grid       the seed-0 learning-rate grid (3 trials x 5 epochs): `tuning/run_grid.py` against
             `benchmarks/tutorial_grid.py`, whole commands, with their memory sampled
  gpu        with CUDA only: the full grid at 4 trials per GPU, trials per minute, GPU use
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import torch
from hardware import mlp_training_flops
from process_memory import TreeMemory
from tutorial_grid import as_torchvision_files

from trainable.data import DataConfig, DataError, load_dataset
from tuning.config import load_config
from tuning.run.timing import covered_s

REPO = Path(__file__).resolve().parent.parent
GRID = load_config(REPO / "configs" / "grid.yaml")
SEED0 = "search.grid.seed=[0]"
MIB = 2**20


def machine() -> dict:
    import ray

    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    cpu = names[0] if names else platform.processor()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
    }


def epoch_time(way: str, data_dir: str, threads: int, cache_dir: str | None) -> dict:
    """One way's epoch time (and for ours, the floor beside it), measured in a fresh process
    that imports only what it needs."""
    command = [sys.executable, str(REPO / "benchmarks" / "epoch_time.py"), way, data_dir]
    command += ["--threads", str(threads)] + (["--cache-dir", cache_dir] if cache_dir else [])
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"bench: the {way} epoch failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def bare_worker_mib() -> int:
    """Own memory (USS) of a process that has imported what a trial imports and built an
    optimiser as a trial does, and nothing else: the fixed cost of a trial's process, whatever
    its data. (Built plainly, a torch.optim optimiser would import torch._dynamo too, 150 MB
    more; our trials skip that import, `trainable/eager.py`, and the tutorial way's do not.)"""
    code = (
        "import torch, ray.tune, trainable.trainable; from trainable.loop import make_optimizer; "
        "from trainable.settings import TrialConfig; make_optimizer(TrialConfig(), "
        "torch.nn.Linear(1, 1).parameters()); print('ready', flush=True); input()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    child.stdout.readline()
    uss = psutil.Process(child.pid).memory_full_info().uss
    child.communicate("\n")
    return round(uss / MIB)


def timed_command(args: list[str], trial_markers: tuple[str, ...], log: Path) -> dict:
    """Run a command to its end, timing its wall clock and sampling its process tree's memory."""
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        memory = TreeMemory(process.pid, trial_markers)
        memory.start()
        returncode = process.wait()
    wall = time.perf_counter() - start
    peaks = memory.stop()
    if returncode != 0:
        tail = log.read_text()[-3000:]  # the log's folder is removed on the way out
        sys.exit(f"bench: {' '.join(args[1:2])} failed (exit {returncode}):\n{tail}")
    return {"wall_s": round(wall, 2), **peaks}


def grid_ours(data_dir: str, cache: list[str], work: Path, extra: list[str]) -> dict:
    run = work / "ours"
    work.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "tuning/run_grid.py",
        "--data-dir",
        data_dir,
        "--results-dir",
        str(work),
        "--name",
        "ours",
        "--no-dashboard",
        "--no-report",
        *cache,
        *extra,
    ]
    measured = timed_command(command, ("Trainable",), work / "ours.log")
    trials = pq.read_table(run / "trials.parquet")
    meta = json.loads(trials.schema.metadata[b"cifar_tune"])
    measured["timings_s"] = meta["timings_s"]
    measured["trials"] = trials.num_rows
    measured["trial_train_s"] = round(sum(trials.column("train_time_s").to_pylist()), 2)
    measured["test_acc"] = dict(
        zip(trials.column("lr").to_pylist(), trials.column("test_acc").to_pylist(), strict=True)
    )
    return measured


def grid_tutorial(cifar_dir: str, work: Path) -> dict:
    command = [sys.executable, "benchmarks/tutorial_grid.py", "--data-dir", cifar_dir]
    return timed_command(command, ("ImplicitFunc", "train_fn"), work / "tutorial.log")


def gpu_utilisation(stop: threading.Event, samples: list[float]) -> None:
    while not stop.wait(0.5):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
        )
        if out.returncode == 0:
            samples.append(float(out.stdout.split()[0]))


def grid_gpu(data_dir: str, cache: list[str], work: Path) -> dict:
    """The full 9-trial grid, four trials sharing each GPU."""
    samples: list[float] = []
    stop = threading.Event()
    sampler = threading.Thread(target=gpu_utilisation, args=(stop, samples), daemon=True)
    sampler.start()
    extra = ["--set", "resources.gpus_per_trial=0.25"]
    measured = grid_ours(data_dir, cache, work / "gpu", extra)
    stop.set()
    sampler.join()
    trials_s = measured["timings_s"]["trials"]
    measured["trials_per_minute"] = round(measured["trials"] / trials_s * 60, 1)
    measured["gpu_util_mean_pct"] = round(statistics.fmean(samples), 1) if samples else None
    return measured


def report(results: dict) -> str:
    hw, ep, ours, tut = results["hardware"], results["epoch"], results["grid"], results["tutorial"]
    t = ours["timings_s"]
    spans = list(t["training_spans"].values())
    first_training = min(begin for begin, _ in spans)
    tune_other = t["trials"] - covered_s(spans) - first_training
    driver = sum(v for k, v in t.items() if k != "training_spans")
    # Images trained per second of wall time while trials were training (evaluation and
    # checkpoints included), against what the matmul peak allows.
    grid_rate = results["train_images"] * GRID.trial.epochs * ours["trials"] / covered_s(spans)
    floor_rate = hw["matmul_gflops"] * 1e9 / hw["training_flops_per_sample"]
    rows = [
        ("epoch, original pipeline", f"{ep['original_s']:.2f} s", ""),
        ("epoch, ours", f"{ep['ours_s']:.2f} s", f"{ep['original_s'] / ep['ours_s']:.1f}x faster"),
        (
            "epoch, hardware floor",
            f"{hw['floor_epoch_s']:.2f} s",
            f"ours takes {ep['floor_ratio']:.2f}x the floor, measured side by side",
        ),
        (
            "  its matmuls alone, batch 64",
            f"{hw['matmuls_epoch_s']:.2f} s",
            f"{hw['matmuls_epoch_s'] / hw['floor_epoch_s']:.2f}x the floor",
        ),
        ("  its optimiser steps alone", f"{hw['optimizer_epoch_s']:.2f} s", "fused Adam"),
        (
            "  the rest of ours",
            f"{ep['ours_s'] - hw['matmuls_epoch_s'] - hw['optimizer_epoch_s']:.2f} s",
            "batches, small ops, metrics, dispatch",
        ),
        ("seed-0 grid, tutorial way", f"{tut['wall_s']:.1f} s", ""),
        (
            "seed-0 grid, run_grid.py",
            f"{ours['wall_s']:.1f} s",
            f"{ours['wall_s'] / tut['wall_s']:.2f}x the tutorial way's time",
        ),
        (
            "trials' own training, summed",
            f"{ours['trial_train_s']:.1f} s",
            f"grid wall / that = {ours['wall_s'] / ours['trial_train_s']:.2f}",
        ),
        ("  Python start and imports", f"{ours['wall_s'] - driver:.1f} s", ""),
        (
            "  data load (cached)",
            f"{t['data_load']:.1f} s",
            "before Ray starts",
        ),
        ("  Ray start", f"{t['ray_start']:.1f} s", ""),
        ("  data into the object store", f"{t['data_to_object_store']:.2f} s", "once"),
        ("  first trials' start", f"{first_training:.1f} s", "actor, imports, data, model"),
        ("  some trial training", f"{covered_s(spans):.1f} s", "two at a time"),
        ("  Tune between and after", f"{tune_other:.1f} s", "results, checkpoints, stops"),
        ("  export, Ray shutdown", f"{t['export']:.1f} + {t['ray_shutdown']:.1f} s", ""),
        (
            "grid training throughput",
            f"{grid_rate:,.0f} img/s",
            f"floor {floor_rate:,.0f} img/s: {floor_rate / grid_rate:.2f}x away",
        ),
        (
            "memory, whole grid run (PSS)",
            f"{ours['peak_total_mib']} MiB",
            f"{ours['most_concurrent_trials']} trials at once",
        ),
        (
            "memory, one trial (PSS / own)",
            f"{ours['peak_trial_pss_mib']} / {ours['peak_trial_uss_mib']} MiB",
            f"dataset {results['data_mib']} MiB",
        ),
        (
            "  own, beyond a bare process",
            f"{ours['peak_trial_uss_mib'] - results['bare_mib']} MiB",
            f"bare: torch, Ray, an optimiser, no data: {results['bare_mib']} MiB",
        ),
        (
            "  the data it maps, shared",
            f"{ours.get('peak_trial_object_store_mib', 0)} MiB",
            "object-store pages, not a copy",
        ),
        (
            "memory, tutorial way (PSS)",
            f"{tut['peak_total_mib']} MiB",
            f"one trial {tut['peak_trial_pss_mib']} / {tut['peak_trial_uss_mib']} MiB, "
            f"{tut['peak_trial_uss_mib'] - results['bare_mib']} beyond a bare process",
        ),
    ]
    if gpu := results.get("gpu"):
        rows.append(
            (
                "GPU grid, 9 trials",
                f"{gpu['trials_per_minute']} trials/min",
                f"GPU busy {gpu['gpu_util_mean_pct']}%",
            )
        )
    width = max(len(r[0]) for r in rows)
    lines = [f"{r[0]:<{width}}  {r[1]:>16}  {r[2]}" for r in rows]
    m = results["machine"]
    head = (
        f"{m['date']}, {m['cpu']}, {m['cores']} cores, torch {m['torch']}, ray {m['ray']}; "
        f"matmul {hw['matmul_gflops']:.0f} GFLOP/s at {hw['threads']} threads; "
        f"the benchmark took {results['bench_s'] / 60:.1f} min"
    )
    return "\n".join([head, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="CIFAR-10 (image folder or torchvision)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    parser.add_argument("--cache-dir", help="decoded-data cache (default: the product's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="for the epoch tests")
    args = parser.parse_args()
    started = time.perf_counter()
    data_dir = str(Path(args.data_dir).resolve())
    cache = ["--set", f"data.cache_dir={args.cache_dir}"] if args.cache_dir else []
    try:
        data = load_dataset(DataConfig(dir=data_dir, cache_dir=args.cache_dir))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    arrays = (data.train_x, data.train_y, data.val_x, data.val_y, data.test_x, data.test_y)
    results: dict = {
        "machine": machine(),
        "data_mib": round(sum(a.nbytes for a in arrays) / MIB),
        "train_images": len(data.train_y),
        "bare_mib": bare_worker_mib(),
    }

    flops = mlp_training_flops(math.prod(data.image_shape), GRID.trial.hidden, len(data.classes))
    work = Path(tempfile.mkdtemp(prefix="bench_"))
    try:
        cifar_dir = as_torchvision_files(data_dir, str(work / "cifar"))  # untimed conversion
        del data  # each measurement loads its own
        ours = epoch_time("ours", data_dir, args.threads, args.cache_dir)
        original = epoch_time("original", cifar_dir, args.threads, None)
        results["hardware"] = {
            "threads": args.threads,
            "matmul_gflops": round(ours["matmul_gflops"], 1),
            "training_flops_per_sample": flops,
            "floor_epoch_s": round(ours["floor_epoch_s"], 3),
            "matmuls_epoch_s": round(ours["matmuls_epoch_s"], 3),
            "optimizer_epoch_s": round(ours["optimizer_epoch_s"], 3),
        }
        results["epoch"] = {
            "ours_s": round(ours["epoch_s"], 3),
            "original_s": round(original["epoch_s"], 3),
            "floor_ratio": round(ours["floor_ratio"], 2),
            "ours_rounds": ours["rounds"],
        }
        results["grid"] = grid_ours(data_dir, cache, work, ["--set", SEED0])
        results["tutorial"] = grid_tutorial(cifar_dir, work)
        if torch.cuda.is_available():
            results["gpu"] = grid_gpu(data_dir, cache, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["bench_s"] = round(time.perf_counter() - started, 1)
    print(report(results))
    if args.out:
        partial = Path(args.out).with_suffix(".partial")
        partial.write_text(json.dumps(results, indent=2))
        os.replace(partial, args.out)


if __name__ == "__main__":
    main()
