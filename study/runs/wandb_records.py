"""Read wandb's offline run files (`run-<id>.wandb`), without a server.

The format is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version), then
32 KiB blocks of chunks, each with a 7-byte header (crc32c, length, type: 1 full, 2 first,
3 middle, 4 last) whose payloads join into protobuf `Record` messages
(wandb.proto.wandb_internal_pb2). flowctl uses it on resume to find the last step an
earlier offline segment of the same run really wrote (a killed process loses what wandb
had not flushed), and the tests use it to check what was logged.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK_SIZE = 32 * 1024
HEADER_SIZE = 7


def read_records(path: Path) -> list:
    """Every complete Record in the file; a torn tail (killed writer) is ignored."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb run file (header {data[:7]!r})")
    records, pending, offset = [], b"", HEADER_SIZE
    while offset + HEADER_SIZE <= len(data):
        block_left = BLOCK_SIZE - offset % BLOCK_SIZE
        if block_left < HEADER_SIZE:  # block trailer padding
            offset += block_left
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + HEADER_SIZE])
        chunk = data[offset + HEADER_SIZE:offset + HEADER_SIZE + length]
        if len(chunk) < length:
            break
        offset += HEADER_SIZE + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history(path: Path) -> list[tuple[int, dict]]:
    """(step, {key: value}) for each history row in the file, in order."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            items = {(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                     for item in record.history.item}
            rows.append((record.history.step.num, items))
    return rows


def run_files(run_dir: Path, run_id: str | None = None) -> list[Path]:
    """Offline run files under {run_dir}/wandb, oldest segment first."""
    pattern = f"wandb/*run-*/run-{run_id or '*'}.wandb"
    return sorted(Path(run_dir).glob(pattern))


def last_logged_step(run_dir: Path, run_id: str) -> int:
    """The highest history step any earlier offline segment of `run_id` holds (-1: none)."""
    last = -1
    for path in run_files(run_dir, run_id):
        try:
            steps = [step for step, _ in history(path)]
        except Exception:  # a file wandb itself could not finish: skip it
            continue
        last = max([last, *steps])
    return last
