"""Reading a run's TensorBoard events back: its scalars, and whether its event files are whole.

TensorBoard's reader stops quietly at the first damaged record of an event file (a run killed
mid-write, a truncated copy, a file that is not an event file at all), so a page or a table built
from its output may silently miss the end of a run. `damaged_event_files` walks each file's record
framing (length, CRC of the length, payload, CRC of the payload: the TFRecord format) and says
where it breaks, so callers can warn instead of staying silent.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

EVENT_FILE_GLOB = "events.out.tfevents.*"

# The tags a training run logs, named once: train.py writes them; reports, sweeps and benchmarks
# read them back. Losses are `losses/<name>` for each metric `ppo_update` returns.
EPISODIC_RETURN = "charts/episodic_return"
EPISODIC_LENGTH = "charts/episodic_length"
LEARNING_RATE = "charts/learning_rate"
ENT_COEF = "charts/ent_coef"
SPS = "charts/SPS"
ELAPSED_SECONDS = "charts/elapsed_seconds"
ENTROPY = "losses/entropy"
EVAL_MEAN_RETURN = "eval/mean_return"
"""A sweep's final evaluation of a run (sampled policy, MinAtar's game)."""


def read_scalars(run_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag of a run's TensorBoard events as (steps, values), in step order.

    Read by TensorBoard's own reader, so steps a resumed run purged (SummaryWriter's `purge_step`)
    are gone here as they are in TensorBoard."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # TensorBoard logs a warning for each purge a resumed run made; the purge is wanted here.
    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    # Scalars only: images and histograms in the same files are not needed (1 keeps one of each).
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 1, "histograms": 1,
                                                           "tensors": 1, "compressedHistograms": 1})
    events.Reload()
    scalars = {}
    for tag in events.Tags()["scalars"]:
        records = events.Scalars(tag)
        steps = np.array([r.step for r in records], dtype=np.int64)
        values = np.array([r.value for r in records], dtype=np.float64)
        order = np.argsort(steps, kind="stable")
        scalars[tag] = (steps[order], values[order])
    return scalars


def damaged_event_files(run_dir) -> list[str]:
    """One line per event file in `run_dir` whose records do not all read back, saying where."""
    problems = []
    for path in sorted(Path(run_dir).glob(EVENT_FILE_GLOB)):
        problem = _first_damage(path)
        if problem:
            problems.append(f"{path.name}: {problem}")
    return problems


def _first_damage(path: Path) -> str | None:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    data = path.read_bytes()
    offset, records = 0, 0
    while offset < len(data):
        header = data[offset:offset + 12]
        if len(header) < 12:
            return f"truncated after {records} records ({len(data) - offset} stray bytes at the end)"
        (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
        if masked_crc32c(header[:8]) != length_crc:
            return f"not an event file, or corrupt after {records} records (bad record header at byte {offset})"
        end = offset + 12 + length + 4
        if end > len(data):
            return f"truncated after {records} records (the last record is cut short)"
        payload = data[offset + 12:offset + 12 + length]
        if masked_crc32c(payload) != struct.unpack("<I", data[end - 4:end])[0]:
            return f"corrupt after {records} records (a record's checksum does not match, byte {offset})"
        offset, records = end, records + 1
    return None
