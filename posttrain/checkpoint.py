"""Checkpoints: atomic writes and exact resume (model, optimizer, scheduler, RNG, recipe state).

Layout of one checkpoint, ``<run_dir>/checkpoints/step-00000012/``:

- ``model.safetensors``: the trainable parameters when the model has frozen ones (a LoRA adapter),
  otherwise the full ``state_dict``; tensors that share storage (tied embeddings) are stored once
  and the other names recorded as aliases in the file's metadata.
- ``optimizer.pt``, ``scheduler.pt``: ``state_dict()`` via ``torch.save``, read back with
  ``torch.load(weights_only=True)`` so a crafted pickle cannot run code.
- ``rng.pt``: python ``random``, numpy, torch CPU and CUDA states plus the recipe's named
  generators, all as tensors / lists (weights-only loadable).
- ``state.json``: the recipe's JSON-able state (step, data cursor, epoch, adaptive KL, ...); with
  ``run.keep_best``, ``keep_best.step`` names the checkpoint holding the best weights so far.
- ``manifest.json``: written last; the size and sha256 of every file above.

Under ``cluster.sharding: fsdp`` the weights and the optimizer state are ``sharded/`` instead, one
``torch.distributed.checkpoint`` written by every rank (its own shards), loadable on any number of ranks or
in one process; rank 0 writes the rest once every rank's shards are in. A one-process checkpoint resumes
on fsdp ranks too (each keeps its shards of the full weights and optimizer state).

Everything is written into ``checkpoints/.tmp-step-…``, fsynced and renamed into place, so a crash
at any moment leaves the previous checkpoints plus either nothing or the complete new one. Old
checkpoints are removed only after the new one is in place; rotation keeps the newest ``keep_last``
and every checkpoint that a kept one names as its ``keep_best`` (so resuming from any kept checkpoint
finds the best weights it recorded). ``latest()`` checks sizes and
checksums (safetensors loads a same-length zeroed file without complaint) and falls back, with a
warning, to the newest checkpoint that verifies.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from posttrain import distributed
from posttrain.errors import CheckpointError, ConfigError
from posttrain.rng import capture_rng_state, restore_rng_state

MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "state.json"
SHARDED_DIR = "sharded"
_FORMAT = "posttrain-checkpoint/1"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"
_REQUIRED = (RNG_FILE, STATE_FILE)
_MODEL_FILES = (MODEL_FILE, f"{SHARDED_DIR}/.metadata")


# ------------------------------------------------------------------------------ model tensors


def _model_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """``(name -> tensor, scope)``: only trainable parameters when some are frozen, else all."""
    parameters = list(model.named_parameters())
    trainable = {name: p for name, p in parameters if p.requires_grad}
    if trainable and len(trainable) < len(parameters):
        return {name: p.detach() for name, p in trainable.items()}, "trainable"
    return {name: t.detach() for name, t in model.state_dict().items()}, "full"


def _deduplicate(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store each shared tensor once (safetensors refuses shared storage); return the aliases."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen_views: dict[tuple[Any, ...], str] = {}
    seen_storages: set[int] = set()
    for name, tensor in tensors.items():
        storage = tensor.untyped_storage().data_ptr()
        view = (storage, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()),
                tensor.dtype)
        if view in seen_views:
            aliases[name] = seen_views[view]
            continue
        if storage in seen_storages:  # a different view of shared memory: an own copy is safest
            tensor = tensor.clone()
        seen_views[view] = name
        seen_storages.add(storage)
        unique[name] = tensor.contiguous().cpu()
    return unique, aliases


def _expected_tensors(model: nn.Module, scope: str) -> dict[str, torch.Tensor]:
    if scope == "trainable":
        return {name: p for name, p in model.named_parameters() if p.requires_grad}
    return dict(model.state_dict())


def _check_model_match(file: Path, saved: dict[str, torch.Tensor],
                       expected: dict[str, torch.Tensor], scope: str) -> None:
    """Raise naming the file when names or shapes differ from the model's."""
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    wrong_shapes = [f"{name}: saved {list(saved[name].shape)}, model {list(expected[name].shape)}"
                    for name in sorted(set(saved) & set(expected))
                    if saved[name].shape != expected[name].shape]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected),
                         ("wrong shape", wrong_shapes)):
        if items:
            shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        what = "trainable parameters" if scope == "trainable" else "state_dict entries"
        raise CheckpointError(f"{file} does not match the model's {what}: " + "; ".join(problems))


def _load_model_file(file: Path, model: nn.Module) -> Callable[[], None]:
    """Read and validate the weights; return the function that copies them into the model."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            saved = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        aliases = json.loads(metadata.get("aliases", "{}"))
        scope = metadata.get("scope", "full")
    except Exception as error:  # safetensors raises its own error types for a damaged header
        raise CheckpointError(f"{file} cannot be read as safetensors "
                              f"({type(error).__name__}: {error}): the file is damaged") from error
    for alias, source in aliases.items():
        if source not in saved:
            raise CheckpointError(f"{file}: alias {alias!r} points to {source!r}, which is absent")
        saved[alias] = saved[source]
    expected = _expected_tensors(model, scope)
    _check_model_match(file, saved, expected, scope)

    def apply() -> None:
        if distributed.sharded():  # the full weights into fsdp ranks: each keeps its shards
            from posttrain.distributed.fsdp import load_full_weights

            load_full_weights(model, saved)
            return
        if scope == "full":
            model.load_state_dict(saved, strict=True)
            return
        with torch.no_grad():
            for name, parameter in expected.items():
                parameter.copy_(saved[name])

    return apply


# -------------------------------------------------------------------------------- file helpers


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory fsync makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_part(directory: Path, name: str, write: Callable[[BinaryIO], None]) -> None:
    """Write one checkpoint file and fsync it: the single place every file goes through."""
    with open(directory / name, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())


def _os_error_in_chain(error: BaseException) -> BaseException:
    """The OSError behind ``error`` (disk full, quota): torch hides it behind a RuntimeError."""
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, OSError):
            return current
        current = current.__cause__ or current.__context__
    return error


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directories in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # old kernel or a filesystem without it
        return False
    raise OSError(code, os.strerror(code), str(second))


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"checkpoint state must be JSON-serialisable; got a {type(value).__name__}")


def _torch_load(file: Path) -> Any:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling raises many types; all mean "not a file we wrote"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(f"{file} cannot be loaded safely ({type(error).__name__}: "
                              f"{first_line[:300]}): it is corrupted or was not written by "
                              f"posttrain") from error


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check the manifest, then each listed file's size and sha256; return the manifest."""
    path = Path(path)
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise CheckpointError(f"{manifest_file} is missing: the checkpoint is incomplete")
    try:
        manifest = json.loads(manifest_file.read_text())
        files = manifest["files"]
        if manifest.get("format") != _FORMAT or not isinstance(files, dict):
            raise ValueError(f"format is {manifest.get('format')!r}, expected {_FORMAT!r}")
        listed = {name: (int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{manifest_file} is malformed ({type(error).__name__}: "
                              f"{error})") from error
    for name in _REQUIRED:
        if name not in listed:
            raise CheckpointError(f"{manifest_file} does not list {name}")
    if not any(name in listed for name in _MODEL_FILES):
        raise CheckpointError(f"{manifest_file} lists no weights ({' or '.join(_MODEL_FILES)})")
    for name, (size, sha256) in listed.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file} is missing (listed in {MANIFEST})")
        try:
            actual = file.stat().st_size
            if actual != size:
                raise CheckpointError(f"{file} has {actual} bytes but {MANIFEST} says {size}: "
                                      f"truncated or overwritten")
            digest = _sha256(file)
        except OSError as error:  # e.g. removed by another process's rotation while we read
            raise CheckpointError(f"{file} could not be read ({error})") from error
        if digest != sha256:
            raise CheckpointError(f"{file} does not match its sha256 in {MANIFEST}: corrupted")
    return manifest


def _best_step_named(path: Path) -> int | None:
    """The step whose checkpoint holds the best weights as of this checkpoint (``run.keep_best``)."""
    try:
        best = json.loads((path / STATE_FILE).read_text()).get("keep_best") or {}
        return int(best["step"]) if best.get("step") is not None else None
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return None


def _sizes_match(path: Path) -> bool:
    """A cheap completeness check (no checksums) used to count checkpoints during rotation."""
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
        return all((path / name).stat().st_size == entry["size"] for name, entry in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


# ------------------------------------------------------------------------------- Checkpointer


class Checkpointer:
    """Saves to and restores from ``<run_dir>/checkpoints``; keeps the newest ``keep_last`` and the
    best-weights checkpoints they name (``run.keep_best``)."""

    def __init__(self, run_dir: Path, keep_last: int = 2) -> None:
        if keep_last < 1:
            raise ConfigError(f"checkpoint keep_last must be at least 1, got {keep_last}",
                              source="run.keep_last")
        self.run_dir = Path(run_dir)
        self.directory = self.run_dir / "checkpoints"
        self.keep_last = keep_last

    def step_dirs(self) -> list[tuple[int, Path]]:
        """``(step, path)`` of every ``step-*`` directory, newest first (not verified)."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = _STEP_DIR.match(entry.name)
            if match and entry.is_dir():
                found.append((int(match.group(1)), entry))
        return sorted(found, reverse=True)

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None,
             scheduler: Any | None, state: dict[str, Any],
             generators: dict[str, Any] | None = None) -> Path:
        """Write checkpoint ``step`` atomically, then rotate; return its directory.

        ``state`` must be JSON-able (0-d tensors and numpy scalars become numbers); ``step`` is
        stored in it. ``generators`` are saved by name and restored in place by ``load``.
        """
        if state.get("step", step) != step:
            raise ValueError(f"state['step'] is {state['step']} but the checkpoint step is {step}")
        state_bytes = json.dumps({**state, "step": step}, default=_json_default, indent=1).encode()
        final = self.step_path(step)
        tmp = self.directory / f"{_TMP_PREFIX}{final.name}"
        writer = distributed.is_writer()  # the only rank here but under fsdp, where every rank writes shards
        if writer:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_temporaries()
            tmp.mkdir()
        if distributed.sharded():
            distributed.barrier()
        try:
            self._write_all(tmp, step, model, optimizer, scheduler, state_bytes, generators)
            if not writer:
                return final
            self._move_into_place(tmp, final)
        except BaseException as error:
            if writer:  # the folder is rank 0's, the other fsdp ranks' shards in it included
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(error, Exception) and not isinstance(error, TypeError):
                cause = _os_error_in_chain(error)
                raise CheckpointError(f"could not write checkpoint {final} ({type(cause).__name__}: "
                                      f"{cause}); the previous checkpoints are untouched") from error
            raise
        self._rotate(step)
        self._remove_temporaries()
        return final

    def _move_into_place(self, tmp: Path, final: Path) -> None:
        """Rename the finished ``tmp`` to ``final``; an existing ``final`` (the same step saved again
        after a resume) is exchanged atomically where the OS can, so it is never absent."""
        if final.exists() and not _exchange(tmp, final):
            replaced = self.directory / f"{_TMP_PREFIX}replaced-{final.name}"
            os.rename(final, replaced)
            try:
                os.rename(tmp, final)
            except OSError:
                os.rename(replaced, final)
                raise
        elif not final.exists():
            os.rename(tmp, final)
        _fsync_path(self.directory)

    def _write_all(self, tmp: Path, step: int, model: nn.Module, optimizer: Any, scheduler: Any,
                   state_bytes: bytes, generators: dict[str, Any] | None) -> None:
        from safetensors.torch import save_file

        if distributed.sharded():
            from posttrain.distributed.fsdp import save_sharded

            save_sharded(tmp / SHARDED_DIR, model, optimizer)  # a collective: rank 0 returns once all are in
            if not distributed.is_writer():
                return
        else:
            tensors, scope = _model_tensors(model)
            unique, aliases = _deduplicate(tensors)
            metadata = {"scope": scope, "aliases": json.dumps(aliases), "step": str(step)}
            save_file(unique, str(tmp / MODEL_FILE), metadata=metadata)
            _fsync_path(tmp / MODEL_FILE)
        if optimizer is not None and not distributed.sharded():
            _write_part(tmp, OPTIMIZER_FILE, lambda f: torch.save(optimizer.state_dict(), f))
        if scheduler is not None:
            _write_part(tmp, SCHEDULER_FILE, lambda f: torch.save(scheduler.state_dict(), f))
        rng = capture_rng_state(generators)
        _write_part(tmp, RNG_FILE, lambda f: torch.save(rng, f))
        _write_part(tmp, STATE_FILE, lambda f: f.write(state_bytes))
        files = {entry.relative_to(tmp).as_posix(): {"size": entry.stat().st_size, "sha256": _sha256(entry)}
                 for entry in sorted(tmp.rglob("*")) if entry.is_file()}
        manifest = {"format": _FORMAT, "step": step, "created": time.time(), "files": files}
        _write_part(tmp, MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        _fsync_path(tmp)

    def _rotate(self, saved_step: int) -> None:
        """Keep the newest ``keep_last`` complete checkpoints up to ``saved_step``, and the best-weights
        checkpoints they name (``keep_best.step`` in their state; never a newer step than their own,
        so walking newest first sees every reference before the checkpoint it names).

        Checkpoints after ``saved_step`` belong to a timeline the run has abandoned by resuming
        from an earlier point; left in place, ``latest()`` would pick them, so they go too.
        """
        kept, named = 0, set()
        for step, path in self.step_dirs():
            if step > saved_step:
                warnings.warn(f"removing checkpoint {path}: it is newer than the step just saved "
                              f"({saved_step}), from before the run resumed at an earlier point",
                              stacklevel=3)
            elif kept < self.keep_last and _sizes_match(path):
                kept += 1
                named.add(_best_step_named(path))
                continue
            elif step in named and _sizes_match(path):
                continue
            # Renamed first so a crash mid-delete never leaves a half-deleted step-* directory.
            doomed = self.directory / f"{_TMP_PREFIX}delete-{path.name}"
            os.rename(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def step_path(self, step: int) -> Path:
        """Where checkpoint ``step`` lives (whether or not it exists)."""
        return self.directory / f"step-{step:08d}"

    def load_weights(self, step: int, model: nn.Module) -> None:
        """Only the weights of checkpoint ``step`` (verified first) into ``model``: optimizer, scheduler
        and RNG states stay as they are (``run.keep_best`` exporting the best weights at the end)."""
        path = self.step_path(step)
        verify_checkpoint(path)
        apply_model = self._weights_loader(path, model, None)
        with _as_checkpoint_error(path / MODEL_FILE):
            apply_model()

    def _remove_temporaries(self) -> None:
        for entry in self.directory.glob(f"{_TMP_PREFIX}*"):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def latest(self) -> Path | None:
        """The newest checkpoint that verifies; invalid newer ones are skipped with a warning."""
        path, problems = self._newest_valid()
        for problem in problems:
            warnings.warn(f"skipping checkpoint {problem}; falling back to an older one", stacklevel=2)
        return path

    def _newest_valid(self) -> tuple[Path | None, list[str]]:
        """The newest verified checkpoint (or None) and why each newer one was rejected."""
        problems = []
        for _, path in self.step_dirs():
            try:
                verify_checkpoint(path)
            except CheckpointError as error:
                problems.append(f"{path.name}: {error}")
                continue
            return path, problems
        return None, problems

    def load(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
             scheduler: Any | None, generators: dict[str, Any] | None = None) -> dict[str, Any]:
        """Restore everything saved at ``path`` (RNG states included); return the recipe state.

        All files are read and checked before anything is changed, so a bad checkpoint leaves the
        model and optimizer as they were.
        """
        path = Path(path)
        verify_checkpoint(path)
        sharded = (path / SHARDED_DIR).is_dir()  # written by fsdp ranks: loads on any shape (DCP reshards)
        apply_model = self._weights_loader(path, model, optimizer)
        optimizer_state = None if sharded else self._read_optional(path, OPTIMIZER_FILE, optimizer,
                                                                   "an optimizer")
        if optimizer is not None and not sharded:
            _check_optimizer_match(path / OPTIMIZER_FILE, optimizer_state, optimizer)
        scheduler_state = self._read_optional(path, SCHEDULER_FILE, scheduler, "a scheduler")
        rng = _torch_load(path / RNG_FILE)
        try:
            state = json.loads((path / STATE_FILE).read_text())
        except (ValueError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path / STATE_FILE} is not valid JSON ({error})") from error
        with _as_checkpoint_error(path / MODEL_FILE):
            apply_model()
        if optimizer is not None and not sharded:
            with _as_checkpoint_error(path / OPTIMIZER_FILE):
                _load_optimizer(model, optimizer, optimizer_state)
        if scheduler is not None:
            with _as_checkpoint_error(path / SCHEDULER_FILE):
                scheduler.load_state_dict(scheduler_state)
        with _as_checkpoint_error(path / RNG_FILE):
            restore_rng_state(rng, generators)
        return state

    @staticmethod
    def _weights_loader(path: Path, model: nn.Module, optimizer: Any) -> Callable[[], None]:
        """What puts the weights of ``path`` in place (from a sharded checkpoint, the optimizer state too)."""
        if not (path / SHARDED_DIR).is_dir():
            return _load_model_file(path / MODEL_FILE, model)
        from posttrain.distributed.fsdp import load_sharded

        return lambda: load_sharded(path / SHARDED_DIR, model, optimizer)

    @staticmethod
    def _read_optional(path: Path, name: str, target: Any, what: str) -> Any:
        if target is None:
            return None
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name} is missing: {what} was given to load() but the "
                                  f"checkpoint was saved without one")
        return _torch_load(path / name)


def _check_optimizer_match(file: Path, saved: Any, optimizer: torch.optim.Optimizer) -> None:
    """Same number of parameter groups and parameters per group as the live optimizer."""
    try:
        saved_sizes = [len(group["params"]) for group in saved["param_groups"]]
        if not isinstance(saved["state"], dict):
            raise TypeError("'state' is not a dict")
    except (TypeError, KeyError, IndexError) as error:
        raise CheckpointError(f"{file} is not an optimizer state_dict ({type(error).__name__}: "
                              f"{error})") from error
    live_sizes = [len(group["params"]) for group in optimizer.param_groups]
    if saved_sizes != live_sizes:
        raise CheckpointError(f"{file} does not match the optimizer: parameter groups of sizes "
                              f"{saved_sizes} were saved, the optimizer has {live_sizes}")


def _load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    if distributed.sharded():  # a one-process optimizer state into fsdp ranks: each keeps its shards
        from posttrain.distributed.fsdp import load_full_optimizer

        load_full_optimizer(model, optimizer, state)
    else:
        optimizer.load_state_dict(state)


@contextlib.contextmanager
def _as_checkpoint_error(file: Path) -> Iterator[None]:
    try:
        yield
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
        raise CheckpointError(f"{file} could not be restored ({type(error).__name__}: "
                              f"{str(error)[:300]})") from error


def find_resume_checkpoint(run_dir: Path) -> Path:
    """The checkpoint to resume from; an error (never a silent fresh start) when there is none."""
    checkpointer = Checkpointer(Path(run_dir))
    path, problems = checkpointer._newest_valid()
    if path is not None:
        if problems:
            warnings.warn(f"resuming from {path}, the newest valid checkpoint; skipped newer ones: "
                          + "; ".join(problems), stacklevel=2)
        return path
    detail = (" (invalid: " + "; ".join(problems) + ")") if problems else ""
    raise CheckpointError(f"No valid checkpoint found in {checkpointer.directory}{detail}: nothing "
                          f"to resume from. Start a new run without --resume, or point run.name at "
                          f"the run to continue.")
