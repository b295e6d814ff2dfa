"""Checkpoints: everything needed to continue a run exactly, written by global rank 0, atomically (a
`step-<N>.pt` counts only once its `.json` checksum is written). `snapshot()` writes the format, `TrainState`
reads it back, `CheckpointManager` owns the policy (docs/design-notes.md, 'The checkpoint files').
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from dist_rnn import __version__, distributed
from dist_rnn.config import RESUME_MUST_MATCH, TrainConfig
from dist_rnn.data.views import format_2_view_state
from dist_rnn.distributed import DistEnv, unwrap
from dist_rnn.errors import UserError, first_line
from dist_rnn.files import atomic_write, atomic_write_json
from dist_rnn.model import build_model

CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.pt$")
# 1: the unversioned layout of dist_rnn up to a3bc583 (position keys at the top level); 2: the state
# kept the image views' pixel order and the sequences' standardisation apart (see format_2_view_state);
# 3: one `view`; 4: a sequence view may read patches (`patch`: 1 where a format-3 view has none), which
# a dist_rnn that reads format 3 at most would ignore, so it refuses format 4
FORMAT_VERSION = 4
# What a checkpoint must hold to resume from (besides its position: `state`, or format 1's keys).
REQUIRED_KEYS = {"model", "optimizer", "scaler", "rng", "config", "world_size"}


@dataclass
class TrainState:
    """Where a run stands and what else a resume restores, besides weights, optimizer and RNGs.

    (epoch, batch_in_epoch) is the position of the NEXT batch to train: a run resumed from here
    starts with batch `batch_in_epoch` of epoch `epoch`'s sample order (the sampler's state).
    """

    step: int = 0                         # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0
    train_seconds: float = 0.0            # summed over every attempt of the run
    tracker_run_id: Optional[str] = None  # the wandb run a resume continues
    view: Optional[dict[str, Any]] = None  # how the model reads its inputs (data.trained_view rebuilds it)
    # With a validation split (--val-size): the best score so far (ties keep the earlier), and how
    # many scores since then did not beat it (--early-stop); checkpoints/best.pt holds its weights.
    best_val_accuracy: Optional[float] = None
    best_step: Optional[int] = None
    scores_since_best: int = 0
    early_stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    @classmethod
    def from_checkpoint(cls, snapshot: dict[str, Any]) -> "TrainState":
        """The state a checkpoint holds, in format 4, 3, 2 or 1 (its keys at the top level)."""
        version = snapshot.get("format_version", 1)
        if version >= 3:
            return cls.from_dict(snapshot["state"])
        if version == 2:
            old = snapshot["state"]
            return cls.from_dict({**old, "view": format_2_view_state(old.get("series"), old.get("pixel_order"))})
        return cls(step=snapshot["step"], epoch=snapshot.get("epoch", 0),
                   batch_in_epoch=snapshot.get("batch_in_epoch", 0),
                   train_seconds=snapshot.get("train_seconds", 0.0), tracker_run_id=snapshot.get("wandb_run_id"),
                   view=format_2_view_state(None, snapshot.get("sequence_permutation")))


def snapshot(state: TrainState, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
             rng: list[dict[str, Any]], config: dict[str, Any], world_size: int,
             schedule: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The checkpoint format: a plain dict `torch.load(weights_only=True)` reads back."""
    return {
        "format_version": FORMAT_VERSION,
        "state": state.to_dict(),
        "model": unwrap(model).state_dict(),  # no `module.` prefix: loads into a bare model
        "optimizer": optimizer.state_dict(),
        "schedule": schedule,  # the learning-rate schedulers' state (None: no schedule)
        "scaler": scaler.state_dict(),  # empty unless fp16
        "rng": rng,  # one entry per rank, in rank order
        "config": config,
        "world_size": world_size,
        "dist_rnn_version": __version__,
    }


BEST_NAME = "best.pt"  # the best validation score's checkpoint, beside the step-<N>.pt ones


def checkpoint_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def metadata_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every step-<N>.pt in the run's checkpoint directory, newest first."""
    folder = checkpoint_dir(out_dir)
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.pt") if (m := CHECKPOINT_NAME.match(p.name))]
    return sorted(found, reverse=True)


# -- RNG state, as plain tensors and numbers (NumPy's get_state() tuple holds an ndarray, which
#    weights_only=True refuses, so it is stored as a list)

def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random number generators."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# -- the policy

class CheckpointManager:
    """A run's checkpoints: when to save, writing (rank 0, atomic, rotated), what to resume from."""

    def __init__(self, out_dir: Path, keep_last: int, save_every: Optional[int]):
        self.out_dir, self.keep_last, self.save_every = Path(out_dir), keep_last, save_every
        self.last_saved_step: Optional[int] = None

    def should_save(self, step: int, boundary: str) -> bool:
        """The save policy. boundary: "step" (after an optimizer step inside an epoch: every
        --save-every steps), or "epoch" / "stop" / "end" (always). Never the same step twice."""
        if step == self.last_saved_step:
            return False
        if boundary == "step":
            return bool(self.save_every) and step % self.save_every == 0
        if boundary not in ("epoch", "stop", "end"):
            raise ValueError(f"unknown boundary {boundary!r}")
        return True

    def save(self, env: DistEnv, state: TrainState, *, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, config: dict[str, Any], best: bool = False,
             schedule: Optional[dict[str, Any]] = None) -> Optional[dict[str, Any]]:
        """Collective (every rank calls it): gather each rank's RNG state, rank 0 writes, all wait.
        Returns, on rank 0, where and how fast it was written. best=True writes checkpoints/best.pt
        (the best validation score's weights), which rotation never deletes and resume never picks."""
        rng = distributed.all_gather_objects(rng_state(env.device), env)

        def write() -> dict[str, Any]:
            info = write_checkpoint(self.out_dir, state.step,
                                    snapshot(state, model, optimizer, scaler, rng, config, env.world_size, schedule),
                                    name=BEST_NAME if best else None)
            if not best:
                prune(self.out_dir, self.keep_last)
            return info

        # Rank 0 writes; a failure (a full disk, say) reaches every rank as the same one-line error,
        # and waiting for its answer is the barrier: nobody runs ahead of a checkpoint that may be needed.
        info = distributed.on_main(env, write)
        if not best:
            self.last_saved_step = state.step
        return info if env.is_main else None

    def choose_resume(self, c: TrainConfig, warn: Callable[[str], None]) -> Optional[str]:
        """Apply the `resume` option: the checkpoint path to continue from, or None for a fresh start."""
        if c.resume == "none":
            if list_checkpoints(self.out_dir) and not c.overwrite:
                raise UserError(f"{checkpoint_dir(self.out_dir)} already holds checkpoints: use `resume`=auto to "
                                "continue that run, or `resume`=none with `overwrite`=True to delete them and start "
                                "again")
            return None
        if c.resume == "auto":
            path = latest_valid(self.out_dir, warn)
            return str(path) if path else None
        return c.resume

    def load_for_resume(self, path: str, c: TrainConfig) -> dict[str, Any]:
        """Load a checkpoint and check that this run may continue from it."""
        loaded = load_checkpoint(Path(path))
        check_compatible(loaded, c, path)
        self.last_saved_step = TrainState.from_checkpoint(loaded).step  # already on disk
        return loaded

    def remove_all(self) -> None:
        prune(self.out_dir, 0)
        best = checkpoint_dir(self.out_dir) / BEST_NAME
        metadata_path(best).unlink(missing_ok=True)
        best.unlink(missing_ok=True)


# -- writing

def write_checkpoint(out_dir: Path, step: int, state: dict[str, Any], name: Optional[str] = None) -> dict[str, Any]:
    """Write step-<N>.pt (or `name`, e.g. best.pt) atomically, then its metadata: only then does the
    checkpoint count."""
    start = time.perf_counter()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = checkpoint_dir(out_dir) / (name or f"step-{step}.pt")
    try:
        metadata_path(path).unlink(missing_ok=True)  # best.pt is replaced: old metadata must not vouch for new data
        atomic_write(path, lambda fh: fh.write(data))
        atomic_write_json(metadata_path(path), {"step": step, "bytes": len(data),
                                                "sha256": hashlib.sha256(data).hexdigest(),
                                                "dist_rnn_version": __version__})
    except OSError as e:
        if not metadata_path(path).exists():
            path.unlink(missing_ok=True)  # data without metadata would never count: free its space
        raise UserError(f"could not write checkpoint {path} ({e.strerror or e}); the earlier "
                        "checkpoints are intact") from None
    return {"path": str(path), "bytes": len(data), "seconds": time.perf_counter() - start}


def prune(out_dir: Path, keep_last: int) -> None:
    """Delete all but the keep_last newest checkpoints (metadata first: a half-deleted one is invalid)."""
    for _, path in list_checkpoints(out_dir)[keep_last:]:
        metadata_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)


# -- reading

def problem(path: Path) -> Optional[str]:
    """Why the checkpoint at path does not count (None when it is complete and intact)."""
    meta_file = metadata_path(path)
    if not path.is_file():
        return "missing"
    if not meta_file.is_file():
        return f"incomplete: no {meta_file.name} (the write did not finish)"
    try:
        meta = json.loads(meta_file.read_text())
        size, digest = int(meta["bytes"]), str(meta["sha256"])
    except (ValueError, KeyError, TypeError):
        return f"unreadable metadata {meta_file.name}"
    data = path.read_bytes()
    if len(data) != size:
        return f"truncated or altered: {len(data)} bytes, metadata says {size}"
    if hashlib.sha256(data).hexdigest() != digest:
        return "corrupt: SHA-256 does not match its metadata"
    return None


def latest_valid(out_dir: Path, warn: Callable[[str], None]) -> Optional[Path]:
    """The newest checkpoint that passes its integrity check; each newer broken one is warned about."""
    candidates = list_checkpoints(out_dir)
    for _, path in candidates:
        reason = problem(path)
        if reason is None:
            return path
        warn(f"warning: skipping checkpoint {path}: {reason}")
    if candidates:
        raise UserError(f"no valid checkpoint in {checkpoint_dir(out_dir)} ({len(candidates)} found, all "
                        "broken); use `resume`=none with `overwrite`=True to start again")
    return None


def check_compatible(snapshot: dict[str, Any], c: TrainConfig, path: str) -> None:
    """Refuse to resume into a different model or a different sample order, naming the fields."""
    saved = snapshot["config"]
    missing = REQUIRED_KEYS - snapshot.keys()
    if "state" not in snapshot and not {"epoch", "batch_in_epoch"} <= snapshot.keys():
        missing = missing | {"state"}
    if missing:
        raise UserError(f"{path}: cannot resume from it, it lacks {', '.join(sorted(missing))}")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # what an older version's run had
    differ = [f"{name} {saved.get(name, defaults[name])!r} -> {getattr(c, name)!r}"
              for name in RESUME_MUST_MATCH if saved.get(name, defaults[name]) != getattr(c, name)]
    if differ:
        raise UserError(f"{path} does not match this run: {'; '.join(differ)} (the model and the sample "
                        "order must be the same to resume; use another `out_dir` or `resume`=none)")


def file_kind(head: bytes) -> str:
    """What a file that is not a checkpoint looks like, from its first bytes."""
    kinds = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
             b"\x1f\x8b": "a gzip file", b"{": "a JSON file", b"[": "a JSON file"}
    for magic, kind in kinds.items():
        if head.startswith(magic):
            return kind
    if not head:
        return "an empty file"
    printable = all(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return "a text file" if printable else "unrecognised binary data"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint without running any code from it; any failure is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    if path.suffix == ".json" and path.with_suffix(".pt").is_file():
        raise UserError(f"{path}: this is the metadata file beside {path.with_suffix('.pt').name}; pass the .pt file")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive, or a legacy pickle
        raise UserError(f"{path}: not a checkpoint ({file_kind(head)})")
    if metadata_path(path).is_file() and (reason := problem(path)):
        raise UserError(f"{path}: {reason}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own message suggests turning weights_only off: never
        raise UserError(f"{path}: refused: it holds Python objects, not only tensors and plain data, and "
                        "loading it could run code; dist_rnn's checkpoints hold none") from None
    except Exception as e:  # zip or format errors come as RuntimeError, EOFError, ...
        raise UserError(f"{path}: not a readable checkpoint ({first_line(e)})") from None
    if isinstance(state, dict) and state.get("format_version", 1) > FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {state['format_version']} is newer than this dist_rnn "
                        f"({__version__}) reads (up to {FORMAT_VERSION})")
    has_position = isinstance(state, dict) and ("state" in state or "step" in state)  # format 2, or 1
    if not has_position or not {"model", "config"} <= state.keys():
        raise UserError(f"{path}: not a dist_rnn checkpoint (needs model, config and its state)")
    return state


def load_weights(model: nn.Module, snapshot: dict[str, Any]) -> None:
    """Load a checkpoint's weights into a bare (not yet DDP-wrapped) model; a mismatch is one line."""
    try:
        model.load_state_dict(snapshot["model"])
    except RuntimeError as e:  # "Error(s) in loading state_dict ...:" then one line per problem
        details = "; ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())
        raise UserError(f"checkpoint weights do not fit the model: {details[:400]}") from None


def trained_config(snapshot: dict[str, Any], path: str) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with (one line if this version cannot read it)."""
    try:
        return TrainConfig(**snapshot["config"])
    except TypeError as e:
        raise UserError(f"{path}: its config does not fit this dist_rnn version ({e})") from None


def trained_model(snapshot: dict[str, Any], config: TrainConfig, input_size: int) -> nn.Module:
    """The model a checkpoint describes, with its weights, in eval mode (its classes: its readout's rows)."""
    model = build_model(config, input_size=input_size, num_classes=len(snapshot["model"]["fc.weight"]))
    load_weights(model, snapshot)
    return model.eval()
