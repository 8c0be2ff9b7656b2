"""``cluster.sharding: fsdp``: the policy sharded over the trainer ranks with torch's FSDP2 (``fully_shard``).

``shard`` puts every decoder layer in an FSDP group of its own and the rest of the causal LM (embeddings,
final norm, output layer: tied embeddings stay one parameter) in the root group. At rest each rank holds
1/world of every parameter, of its gradient and of the optimizer's state. What is gathered when:

- a training forward and backward (``through_root``: the log-prob code calls the backbone and the output
  layer as submodules, so it runs as a registered forward method of the root, and FSDP's hooks fire):
  the root group for the whole micro-batch, each layer's group while that layer runs (again in
  backward), gradients reduce-scattered per group as soon as they are complete;
- sampling (``full_weights``): every group at once for the whole ``generate`` call, since the rollout
  engine reads weights directly (its own decode loop; with ``sampling.dtype: bfloat16`` it keeps its
  bf16 copy of the whole model between calls, as in one process); it is handed a plain module of the
  policy's class pointing at the gathered tensors; freed after the call;
- checkpoints (``save_sharded``): each rank writes its own shards (``torch.distributed.checkpoint``), no
  gather; ``final/`` (``full_state_dict``): the full weights gathered to rank 0's CPU memory once.

Gradients are reduced with a plain sum (divide factor 1, sum-only collectives: gloo has no PREMUL_SUM
or AVG reduce-scatter), since each rank's loss is already weighted by its share of the batch's normaliser
(``distributed.rank_rows``). Every forward all-gathers, so the ranks must run the same number of
forwards: ``training.accumulate`` pads a rank with fewer micro-batches with zero-weight passes
(``distributed.lockstep``), and a non-finite loss still runs its backward (the step is skipped on all).
"""

from __future__ import annotations

import contextlib
import types
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

from posttrain.errors import CheckpointError, ConfigError
from posttrain.logprobs import unwrap

ROOT_METHOD = "posttrain_forward"
"""The root's registered forward method: ``root.posttrain_forward(fn, *args)`` runs ``fn(*args)`` inside
FSDP's pre- and post-forward hooks (all-gather before, backward hooks on the outputs after)."""


def shard(model: nn.Module) -> nn.Module:
    """``fully_shard`` every decoder layer, then the whole causal LM as the root; returns ``model``."""
    if hasattr(model, "peft_config"):
        raise ConfigError("cluster.sharding=fsdp shards full-weight training; with model.lora_rank > 0 the "
                          "trainable state is the small adapter: use cluster.sharding=ddp")
    root = unwrap(model)
    decoder = getattr(root, "get_decoder", lambda: None)()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or root.get_output_embeddings() is None:
        raise ConfigError("cluster.sharding=fsdp shards a causal LM (decoder layers in get_decoder().layers, "
                          f"an output layer); {type(root).__name__} is not one: use cluster.sharding=ddp")
    # on the model's device type (FSDP's default mesh is CUDA whenever a GPU is visible, even to gloo ranks)
    mesh = init_device_mesh(next(root.parameters()).device.type, (dist.get_world_size(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(root, mesh=mesh)
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    setattr(root, ROOT_METHOD, types.MethodType(lambda self, fn, *args, **kwargs: fn(*args, **kwargs), root))
    register_fsdp_forward_method(root, ROOT_METHOD)
    with torch.no_grad():  # the root is whichever group runs forward first: make it this one, now
        getattr(root, ROOT_METHOD)(lambda: None)
    root.reshard()
    return model


def sharded_root(model: nn.Module) -> FSDPModule | None:
    root = unwrap(model)
    return root if isinstance(root, FSDPModule) and hasattr(root, ROOT_METHOD) else None


def through_root(model: nn.Module, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` as a forward of ``model``'s FSDP root (``fn`` may call any submodule)."""
    root = sharded_root(model)
    if root is None:
        return fn(*args, **kwargs)
    out = getattr(root, ROOT_METHOD)(fn, *args, **kwargs)
    if not torch.is_grad_enabled():  # no backward will reshard the root: free it (and never read it stale)
        root.reshard()
    return out


@contextlib.contextmanager
def full_weights(model: nn.Module) -> Iterator[nn.Module]:
    """The module to sample with: a plain copy of ``model``'s class whose parameters are ``model``'s, every
    group gathered whole for the block (the rollout engine reads weights directly and may copy the module,
    which FSDP refuses; the copy has no FSDP hooks to fire). ``model`` itself when it is not sharded."""
    root = sharded_root(model)
    if root is None:
        yield model
        return
    groups = [module for module in root.modules() if isinstance(module, FSDPModule)]
    try:
        for group in groups:
            group.unshard()
        whole = _pointed_at(root)
        from posttrain.rollout import sync_weights

        sync_weights(whole)  # an engine's own bf16 copy: from these weights, wherever they were gathered to
        yield whole
    finally:
        for group in groups:
            group.reshard()


_plain_twins: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


def _pointed_at(root: nn.Module) -> nn.Module:
    """The plain twin of the sharded ``root`` (built once on the meta device: no memory of its own),
    its parameters and buffers pointed at ``root``'s, which are whole while gathered."""
    if root not in _plain_twins:
        with torch.device("meta"):
            _plain_twins[root] = type(root)(root.config)
    twin = _plain_twins[root]
    for name, tensor in [*root.named_parameters(remove_duplicate=False),
                         *root.named_buffers(remove_duplicate=False)]:
        owner, _, attribute = name.rpartition(".")
        kind = "_parameters" if isinstance(tensor, nn.Parameter) else "_buffers"
        getattr(twin.get_submodule(owner), kind)[attribute] = tensor
    twin.train(root.training)
    return twin


def with_full_weights(generate: Callable[..., Any]) -> Callable[..., Any]:
    """``generate(model, ...)`` with ``model``'s weights gathered for the call."""

    def gathered(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with full_weights(model) as whole:
            return generate(whole, *args, **kwargs)

    return gathered


def _most(value: int) -> int:
    """The largest ``value`` over the ranks (on the device the group's backend reduces on)."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    most = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most.item())


def loss_flags(loss_finite: bool) -> bool:
    """Whether every rank's losses were finite (FSDP reduced the gradients during backward)."""
    return not _most(int(not loss_finite))


def most_passes(count: int) -> int:
    """The most micro-batches any rank runs this time."""
    return _most(count)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full weights on rank 0's CPU (every rank takes part in the gather; the others get {})."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(unwrap(model), options=options)


def save_sharded(directory: Path, model: nn.Module, optimizer: Any) -> None:
    """Each rank's shards of the weights and the optimizer state into ``directory`` (one DCP checkpoint)."""
    model_state, optimizer_state = get_state_dict(unwrap(model), optimizer)
    parts: dict[str, Any] = {"model": model_state}
    if optimizer is not None:
        parts["optimizer"] = optimizer_state
    dcp.save(parts, checkpoint_id=str(directory))


def load_sharded(directory: Path, model: nn.Module, optimizer: Any) -> None:
    """Weights (and optimizer state) of a ``save_sharded`` checkpoint written by any number of ranks, into
    ``model`` sharded over any number of ranks or whole in one process (DCP reshards on load). Without
    ``optimizer``, the weights alone."""
    try:
        with warnings.catch_warnings():  # DCP warns when it loads in one process, which is what is asked
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninit")
            _load_parts(directory, unwrap(model), optimizer)
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{directory} (a sharded checkpoint) could not be loaded into this model "
                              f"({type(error).__name__}: {str(error)[:300]})") from error


def _load_parts(directory: Path, root: nn.Module, optimizer: Any) -> None:
    if optimizer is None:
        parts = {"model": get_model_state_dict(root)}
        dcp.load(parts, checkpoint_id=str(directory))
        set_model_state_dict(root, parts["model"])
        return
    model_state, optimizer_state = get_state_dict(root, optimizer)
    parts = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(parts, checkpoint_id=str(directory))
    set_state_dict(root, optimizer, model_state_dict=parts["model"], optim_state_dict=parts["optimizer"])


def load_full_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """A one-process checkpoint's full weights into the sharded ``model``: each rank keeps its shards."""
    set_model_state_dict(unwrap(model), weights, options=StateDictOptions(full_state_dict=True))


def load_full_optimizer(model: nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
    """A one-process optimizer state (keyed by parameter index) into the sharded ``model``'s optimizer."""
    root = unwrap(model)
    names = {id(param): name for name, param in root.named_parameters()}
    by_index = dict(enumerate(names[id(param)] for group in optimizer.param_groups
                              for param in group["params"]))
    by_name = {"state": {by_index[int(index)]: value for index, value in state["state"].items()},
               "param_groups": [{**group, "params": [by_index[int(index)] for index in group["params"]]}
                                for group in state["param_groups"]]}
    set_optimizer_state_dict(root, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
