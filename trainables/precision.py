"""bf16 autocast and the channels_last memory format, decided on the device a trial runs on.

`train.bf16` and `train.channels_last` are `true`, `false` or `auto` (the default). Whether either one pays depends
on the machine, not on the space file: bf16 autocast is several times faster than float32 on a CPU with native bf16
units and several times slower on one without; channels_last speeds up convolutions on some CPUs and not others.

- On CUDA, `auto` turns bf16 on where the GPU supports it and channels_last on for networks with convolutions.
- On a CPU, `auto` is decided by a short probe at the trial's start: a few forward+backward steps of the trial's own
  model on a batch of its input shape, in float32 and bf16, contiguous and channels_last (conv nets only). A variant
  other than plain float32 is chosen only when it is at least `SPEEDUP_NEEDED` times as fast, because bf16 also
  costs accuracy and a small gain is within the probe's noise.
- The probe's measurements are cached per node in `<cache dir>/precision.json`, keyed by the model config, the
  input shape, the probe batch, the torch version, the CPU model and the thread count; the cache dir is
  `$GCE_SEARCH_CACHE_DIR`, else `$XDG_CACHE_HOME/gce-search`, else `~/.cache/gce-search`. Trials starting together
  on one node take a file lock, so one of them measures (on otherwise quiet cores) and the others read its result.
- The probe saves and restores torch's global RNG and draws its batch from its own generator, so a trial's
  numbers do not depend on whether it probed: resume and retrain stay bitwise on CPU.
- An explicit `true` that the probe measures as slower than `false` gets a warning with the measured ratio.

The values a trial used go into every result (`train/bf16`, `train/channels_last`), into the final result's
`device/info`, and into its checkpoint (a resumed trial keeps them); `gce-search export` writes them into the
exported config, so a retrain runs with the same precision.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

AUTO = "auto"
CACHE_ENV = "GCE_SEARCH_CACHE_DIR"
CACHE_FILE = "precision.json"
# A variant other than plain float32 must be this much faster to be chosen (and an explicit `true` this much slower
# to be warned about): the probe is a few steps on a possibly busy machine.
SPEEDUP_NEEDED = 1.10
PROBE_BATCH = 32  # images per probe step (at most the trial's batch): enough to time a step, cheap on a slow CPU
PROBE_MIN_S = 0.25  # timed seconds per variant, after one warm-up step
PROBE_MAX_STEPS = 5
VARIANTS = (("fp32", False, False), ("fp32+channels_last", False, True), ("bf16", True, False),
            ("bf16+channels_last", True, True))


def variant_name(bf16: bool, channels_last: bool) -> str:
    return ("bf16" if bf16 else "fp32") + ("+channels_last" if channels_last else "")


@dataclass
class Precision:
    """What a trial runs with and why: decided_by is config, cuda, probe, cache or checkpoint."""

    bf16: bool
    channels_last: bool
    decided_by: str
    images_per_s: dict[str, float] = field(default_factory=dict)  # probe measurements by variant name
    probe_s: float = 0.0  # seconds this trial spent probing (0 on a cache hit)
    warnings: list[str] = field(default_factory=list)

    def info(self, device: torch.device) -> dict[str, Any]:
        """The `device/info` result entry."""
        out: dict[str, Any] = {"device": str(device), "bf16": self.bf16, "channels_last": self.channels_last,
                               "decided_by": self.decided_by, "torch": str(torch.__version__),
                               "threads": torch.get_num_threads()}
        if device.type == "cuda":
            out["gpu"] = torch.cuda.get_device_name(device)
        else:
            out["cpu"] = cpu_model()
        if self.images_per_s:
            out["probe_images_per_s"] = {k: round(v, 2) for k, v in self.images_per_s.items()}
            out["probe_s"] = round(self.probe_s, 3)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), for the probe cache key."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gce-search"


def has_conv(model: torch.nn.Module) -> bool:
    """channels_last changes nothing for a network without convolutions, so it is only probed for conv nets."""
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def measure(model: torch.nn.Module, input_shape: tuple[int, ...], num_classes: int, batch: int,
            variants=VARIANTS, min_time_s: float = PROBE_MIN_S, max_steps: int = PROBE_MAX_STEPS
            ) -> dict[str, float]:
    """Training images per second of forward + backward on a copy of `model`, per (name, bf16, channels_last)
    variant, on the CPU with torch's current thread count.

    Leaves the model and every RNG as they were: the copy takes the steps, the batch comes from a private
    generator, and torch's global RNG (dropout) is restored afterwards. Each variant has one untimed warm-up step;
    one whose first timed step takes more than 4x the fastest step so far is not timed further: a much slower
    variant is not chosen, and on a CPU without bf16 units one bf16 step can take seconds.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_shape, generator=gen)
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    rates: dict[str, float] = {}
    best_step = float("inf")
    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(model).train()
        for name, bf16, channels_last in variants:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            probe = probe.to(memory_format=fmt)
            xb = x.contiguous(memory_format=fmt) if x.dim() == 4 else x

            def step(probe=probe, xb=xb, bf16=bf16) -> float:  # this variant's model, batch and dtype
                t0 = time.perf_counter()
                with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = probe(xb)
                F.cross_entropy(logits.float(), y).backward()
                probe.zero_grad(set_to_none=True)
                return time.perf_counter() - t0

            step()  # warm-up: the first call of a variant builds its kernels
            spent, steps = 0.0, 0
            while steps < max_steps and (steps == 0 or spent < min_time_s):
                spent += step()
                steps += 1
                if spent > 4 * best_step:
                    break
            best_step = min(best_step, spent / steps)
            rates[name] = batch * steps / spent
    return rates


def choose(rates: dict[str, float], want_bf16: bool | str, want_channels_last: bool | str, conv: bool
           ) -> tuple[bool, bool, list[str]]:
    """(bf16, channels_last, warnings) from the probe's rates and the config's values (each True, False or auto).

    Among the combinations the config allows, the first (fewest changes from float32, contiguous) is the
    baseline; another is chosen only when it is at least SPEEDUP_NEEDED times as fast, and then the fastest."""
    bf16_options = (False, True) if want_bf16 == AUTO else (bool(want_bf16),)
    cl_options = ((False, True) if conv else (False,)) if want_channels_last == AUTO \
        else (bool(want_channels_last) and conv,)
    candidates = [(b, c) for b in bf16_options for c in cl_options]

    def rate(bf16: bool, channels_last: bool) -> float | None:
        return rates.get(variant_name(bf16, channels_last))

    chosen = base = candidates[0]
    for candidate in candidates[1:]:
        r, r_base, r_chosen = rate(*candidate), rate(*base), rate(*chosen)
        if r is not None and r_base is not None and r >= SPEEDUP_NEEDED * r_base and r > (r_chosen or 0.0):
            chosen = candidate
    warnings = []
    checks = [("train.bf16", want_bf16 is True, (True, chosen[1]), (False, chosen[1]))]
    if conv:
        checks.append(("train.channels_last", want_channels_last is True, (chosen[0], True), (chosen[0], False)))
    for key, explicit_true, on, off in checks:
        r_on, r_off = rate(*on), rate(*off)
        if explicit_true and r_on and r_off and r_on * SPEEDUP_NEEDED < r_off:
            warnings.append(f"{key}: true is {r_off / r_on:.2f}x slower than false on this CPU (probe: "
                            f"{variant_name(*on)} {r_on:.1f} img/s, {variant_name(*off)} {r_off:.1f} img/s); "
                            f"'auto' chooses for the machine")
    return chosen[0], chosen[1], warnings


def _cache_key(model_cfg: dict, input_shape: tuple[int, ...], batch: int) -> str:
    return json.dumps({"model": model_cfg, "input": list(input_shape), "batch": batch, "torch": str(torch.__version__),
                       "cpu": cpu_model(), "threads": torch.get_num_threads()}, sort_keys=True)


@contextlib.contextmanager
def _locked(directory: Path):
    """An exclusive lock on the node's probe cache (waits for a trial that is probing)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / (CACHE_FILE + ".lock"), "a+") as fh:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): probes may overlap, the cache still works
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent or damaged: measured again and rewritten
    return data if isinstance(data, dict) else {}


def probe_rates(model: torch.nn.Module, model_cfg: dict, input_shape: tuple[int, ...], num_classes: int,
                batch: int) -> tuple[dict[str, float], bool, float]:
    """(rates, from_cache, seconds spent measuring) for this model and input on this node."""
    conv = has_conv(model)
    variants = VARIANTS if conv else tuple(v for v in VARIANTS if not v[2])
    batch = max(1, min(batch, PROBE_BATCH))
    key = _cache_key(model_cfg, input_shape, batch)
    directory = cache_dir()
    try:
        with _locked(directory):
            path = directory / CACHE_FILE
            cached = _read_cache(path).get(key)
            if isinstance(cached, dict) and all(isinstance(cached.get(v[0]), (int, float)) for v in variants):
                return {v[0]: float(cached[v[0]]) for v in variants}, True, 0.0
            t0 = time.perf_counter()
            rates = measure(model, input_shape, num_classes, batch, variants)
            spent = time.perf_counter() - t0
            table = _read_cache(path)
            table[key] = rates
            tmp = path.with_name(f".{CACHE_FILE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
            os.replace(tmp, path)
            return rates, False, spent
    except OSError:  # a read-only home: measure without caching
        t0 = time.perf_counter()
        rates = measure(model, input_shape, num_classes, batch, variants)
        return rates, False, time.perf_counter() - t0


def decide(train_cfg: dict, model: torch.nn.Module, model_cfg: dict, input_shape: tuple[int, ...],
           num_classes: int, device: torch.device) -> Precision:
    """The precision a trial runs with, from `train.bf16` / `train.channels_last` and the device."""
    want_bf16, want_cl = train_cfg["bf16"], train_cfg["channels_last"]
    conv = has_conv(model)
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        bf16 = supported if want_bf16 == AUTO else bool(want_bf16)
        channels_last = conv if want_cl == AUTO else bool(want_cl)
        warnings = []
        if want_bf16 is True and not supported:
            warnings.append(f"train.bf16: true on {torch.cuda.get_device_name(device)}, which has no native bf16; "
                            f"valid: 'auto' or false")
        auto = AUTO in (want_bf16, want_cl)
        return Precision(bf16, channels_last, "cuda" if auto else "config", warnings=warnings)
    # Only a `true` can be slow, so an all-false config needs no measurement.
    if want_bf16 is not True and want_bf16 != AUTO and want_cl is not True and want_cl != AUTO:
        return Precision(False, False, "config")
    if not conv and want_bf16 is False:
        return Precision(False, want_cl is True, "config")
    rates, cached, spent = probe_rates(model, model_cfg, input_shape, num_classes, train_cfg["batch_size"])
    bf16, channels_last, warnings = choose(rates, want_bf16, want_cl, conv)
    if want_cl is True and not conv:
        channels_last = True  # asked for; harmless and without effect on a network without convolutions
    auto = AUTO in (want_bf16, want_cl)
    return Precision(bf16, channels_last, ("cache" if cached else "probe") if auto else "config", rates, spent,
                     warnings)


def from_checkpoint(saved: Any) -> Precision | None:
    """The precision a checkpoint's trial ran with (None for a checkpoint written before it was recorded)."""
    if isinstance(saved, dict) and isinstance(saved.get("bf16"), bool) and isinstance(saved.get("channels_last"),
                                                                                       bool):
        return Precision(saved["bf16"], saved["channels_last"], "checkpoint")
    return None


def pin_precision(cfg: dict, result: dict) -> dict:
    """Replace `auto` in a resolved config's train.bf16 / train.channels_last with what the trial used (its
    result's train/bf16, train/channels_last), so a retrain of the config runs the same way (in place)."""
    train = cfg["train"]
    for key in ("bf16", "channels_last"):
        used = result.get(f"train/{key}")
        if train.get(key) == AUTO and isinstance(used, bool):
            train[key] = used
    return cfg
