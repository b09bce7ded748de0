"""What every benchmark writes with `--json`: its name, when, on what machine, with what settings."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (Linux), which `platform.processor()` leaves empty there."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(**extra) -> dict:
    """The facts that decide whether two benchmark runs can be compared: machines of one kind
    differ by the day, so the CPU model is among them."""
    return {"platform": platform.platform(), "processor": cpu_model(),
            "python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), **extra}


def write_json(path, benchmark: str, args=None, **results) -> None:
    """Write `results` with the benchmark's name, the date, `machine()` and the CLI settings."""
    report = {"benchmark": benchmark, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), **results}
    if args is not None:
        report["settings"] = {k: v for k, v in vars(args).items() if k != "json_path"}
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
