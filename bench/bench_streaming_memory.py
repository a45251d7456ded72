"""Peak memory and throughput of a trial on an ImageFolder: the in-memory path against the streaming path.

Generates an ImageFolder of 32×32 RGB PNGs (10 classes) in a temporary directory, then trains one epoch of a small
MLP on it twice, each in a fresh Python process: with the default data.memory_limit (the data fits: decoded once
into tensors) and with data.memory_limit: 1000 (streamed through a DataLoader with data.workers processes, decoded
per batch). Prints, for each path, the child's peak RSS (resource.getrusage ru_maxrss of the trial process, and the
largest of its own child processes: the DataLoader workers when streaming), the training images/s of the epoch (train/images_per_s) and the whole trial's wall time
(decoding included), and the ratios.

    python bench/bench_streaming_memory.py [--images 12000] [--workers 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from gce_search.trainables.trial import run_trial

root, limit, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = {"name": "image_folder", "root": root, "workers": workers}
if limit != "default":
    data["memory_limit"] = int(limit)
cfg = {"data": data, "model": {"name": "mlp", "width": 256, "depth": 2},
       "train": {"epochs": 1, "batch_size": 256, "device": "cpu", "lr": 0.05},
       "calibration": {"method": "ts"}}
t0 = time.perf_counter()
m = run_trial(cfg)
wall = time.perf_counter() - t0
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "images_per_s": m["train/images_per_s"], "trial_wall_s": wall,
                  "streamed": m["data/info"]["streamed"], "val_acc": m["val/acc"],
                  "sizes": m["data/info"]["sizes"]}))
"""


def write_folder(root: Path, images: int, classes: int = 10, size: int = 32, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / "train" / f"class_{c}").mkdir(parents=True)
    for i in range(images):
        c = i % classes
        pixels = (rng.random((size, size, 3)) * 128 + c * 12).astype(np.uint8)
        Image.fromarray(pixels).save(root / "train" / f"class_{c}" / f"{i:06d}.png")


def run_child(root: Path, limit: str, workers: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(root), limit, str(workers)], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child ({limit}) failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12000, help="PNG files to generate (default 12000)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="data.workers of the streaming path (default min(4, CPUs))")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gce-bench-folder-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_folder(root, args.images)
        on_disk = sum(p.stat().st_size for p in root.rglob("*.png"))
        print(f"ImageFolder: {args.images} PNGs 3×32×32, {on_disk / 2**20:.1f} MiB on disk, "
              f"{args.images * 3 * 32 * 32 * 4 / 2**20:.1f} MiB as float32; written in {time.perf_counter() - t0:.1f} s")
        memory = run_child(root, "default", args.workers)
        streamed = run_child(root, "1000", args.workers)
    assert memory["streamed"] is False and streamed["streamed"] is True
    for name, r in (("in-memory", memory), (f"streaming ({args.workers} workers)", streamed)):
        print(f"{name:>24}: peak RSS {r['peak_rss_mb']:7.1f} MiB (its child processes {r['children_peak_rss_mb']:6.1f} MiB), "
              f"{r['images_per_s']:8.0f} images/s in the epoch, trial {r['trial_wall_s']:.1f} s, "
              f"val/acc {r['val_acc']:.3f}")
    ratio = {"peak_rss": streamed["peak_rss_mb"] / memory["peak_rss_mb"],
             "images_per_s": streamed["images_per_s"] / memory["images_per_s"],
             "trial_wall_s": streamed["trial_wall_s"] / memory["trial_wall_s"]}
    print(f"{'streaming / in-memory':>24}: peak RSS x{ratio['peak_rss']:.2f}, images/s x{ratio['images_per_s']:.2f}, "
          f"trial time x{ratio['trial_wall_s']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"images": args.images, "workers": args.workers, "in_memory": memory,
                                               "streaming": streamed, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
