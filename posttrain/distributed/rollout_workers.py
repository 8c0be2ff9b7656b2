"""Rollout workers: Ray actors that each hold a rollout engine and a copy of the policy, and sample
shares of a batch of prompts.

``RolloutPool.generate`` has ``posttrain.rollout.generate``'s signature and result. The driver checks
and tokenizes the prompts (errors name the prompt's index in the whole batch), cuts them into one
contiguous share of whole prompts per worker (all n samples of a prompt on one worker), and the
shares come back in prompt order. The seed is drawn here when the call has none, as the engine would
draw it, and passed on: each sample's random stream depends only on the seed, its prompt's tokens and
its sample index (``rollout/slots.py``), so the workers sample what one process samples wherever the
slot engine runs. (Not the batch engine's samples, a LoRA policy's included: they depend on the
split. Nor two equal prompts of one batch that land on different workers: both count as the first of
their kind there; a step's prompts are distinct rows in practice.)

Weights: each worker loads the policy from the run's model config, then holds the weights the driver
pushed. The driver pushes when the policy's ``weights_signature`` has moved since its last push (after
every optimizer step): the trainable tensors, ``ray.put`` once and read by every worker, under a new
weight version (0 for the first push). Each sample call names the version it wants; a worker that
holds another loads it first, and every ``Rollouts`` carries the version it was sampled with, which
``check_on_policy`` compares with the policy's own. Frozen tensors (a LoRA's base) are never sent:
they are the model config's on both sides.

Faults: a worker that dies (SIGKILL, out of memory, a lost node) is restarted by Ray, loads the model
from the config again and its share is sent again with the same version (``max_restarts`` /
``max_task_retries``), so it reloads the current weights before sampling; after ``RESTARTS`` deaths
the run stops with a ClusterError.

Sampling ahead (``cluster.max_staleness`` > 0, one step off as verl's one_step_off and TRL's async
GRPO): ``sample_ahead`` submits the next step's prompts to the workers right after this step's
rollouts come back, with the weights they were sampled with, and returns at once; the driver trains
meanwhile, and the next ``generate`` with the same arguments takes those rollouts (a version behind
the policy then; the loss corrects with truncated importance weights, ``rl.RolloutCorrection``).
Any other call samples as usual and leaves them waiting. A worker that dies in a share sampled ahead
redoes it as above, with the version it was sent.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any

import ray
import torch
from torch import nn

from posttrain.config import ClusterConfig, ModelConfig
from posttrain.distributed import ClusterError
from posttrain.distributed.cluster import (
    RESTARTS,
    Cluster,
    Role,
    pin_to_share_of_cores,
    share_bounds,
    started,
)
from posttrain.models import is_peft
from posttrain.rollout import Rollouts, SamplingParams, checked_prompt_ids, generate
from posttrain.rollout.sampling import prompt_occurrences
from posttrain.rollout.weights import weights_signature


@ray.remote
class RolloutWorker:
    """A copy of the policy and its rollout engines in its own process, on its share of its node's cores."""

    def __init__(self, bundle_index: int, cpus: float, model_config: ModelConfig) -> None:
        from posttrain.runner import load_policy

        pin_to_share_of_cores(bundle_index, cpus)
        self.model, self.tokenizer, _ = load_policy(model_config)
        self.loaded: tuple[int, str] = (-1, "")  # (version, dtype sent): none the driver pushed yet

    def pid(self) -> int:
        return os.getpid()

    def generate(self, version: int, weights: list[Any], sent_as: str, prompt_ids: list[list[int]], n: int,
                 sampling: SamplingParams, backend: str, engine_options: dict[str, Any] | None) -> Rollouts:
        """``n`` samples of each prompt with the weights of ``version`` (``weights[0]``: their object, sent
        in dtype ``sent_as``, boxed so that a worker that holds them already does not fetch them)."""
        if self.loaded != (version, sent_as):
            load_weights(self.model, ray.get(weights[0]))
            self.loaded = (version, sent_as)
        rollouts = generate(self.model, self.tokenizer, prompt_ids, n, sampling, backend=backend,
                            engine_options=engine_options)
        rollouts.weight_version = version
        return rollouts


def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` (parameter name -> values) into ``model``'s parameters in place, so its engines
    see new weights (their signature moves). A name the model lacks is a ClusterError."""
    params = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise ClusterError(f"the rollout worker's policy has no parameter {unknown[0]!r} ({len(unknown)} of "
                           "the pushed ones missing): it was loaded from the run's model config, which must "
                           "build the same model as the trainer's")
    with torch.no_grad():
        for name, values in tensors.items():
            params[name].copy_(values)


def share_options(engine_options: dict[str, Any] | None, backend: str, prompt_ids: list[list[int]],
                  first: int, stop: int) -> dict[str, Any] | None:
    """The engine options of the share ``first:stop`` of a request: for the torch engine, each prompt's
    occurrence among equal prompts of the WHOLE request, so that its random streams are the ones one
    process draws (a worker counting within its share would repeat another worker's streams)."""
    if backend != "torch":
        return engine_options
    return {**(engine_options or {}), "occurrences": tuple(prompt_occurrences(prompt_ids[:stop])[first:])}


def counted_from(part: Rollouts, first: int) -> None:
    """A share's ``prompt_index`` (counted from 0 by whoever sampled it) counted in the whole request."""
    part.prompt_index = [first + index for index in part.prompt_index]


def joined(parts: list[Rollouts], started: float) -> Rollouts:
    """The shares as one batch, timed as one call from ``started`` (the shares ran side by side)."""
    rollouts = Rollouts.concat(parts)
    seconds = time.perf_counter() - started
    tokens = rollouts.timing.get("completion_tokens", 0.0)
    rollouts.timing.update(seconds=seconds, tokens_per_s=tokens / seconds if seconds > 0 else 0.0)
    return rollouts


REDUCED_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def with_seed(sampling: SamplingParams) -> SamplingParams:
    """``sampling`` with a seed: its own, or one drawn from torch's global RNG as the engine draws it, so
    that the global RNG moves as in one process."""
    if sampling.seed is not None:
        return sampling
    return dataclasses.replace(sampling, seed=int(torch.randint(2**62, (1,)).item()))


@dataclass
class _Submitted:
    """Shares being sampled: the call they answer, the weight version sent, one object per share."""

    call: tuple[Any, ...]  # (prompt ids, n, sampling as asked, backend, engine options)
    version: int
    pending: list[Any]
    shares: list[tuple[int, int]]


class RolloutPool:
    """``cluster.rollout_workers`` rollout workers placed on the run's cluster, the weight version
    they were last sent, and the shares sampled ahead (if any)."""

    def __init__(self, cluster: Cluster, config: ClusterConfig, model_config: ModelConfig) -> None:
        role = Role.of(config, "rollout")
        options = cluster.place(role)
        self.workers = [RolloutWorker.options(**option, max_restarts=RESTARTS, max_task_retries=RESTARTS)
                        .remote(index, role.cpus, model_config) for index, option in enumerate(options)]
        self.pids = started(self.workers, "rollout", cluster.address)
        self.version = -1
        self._signature: tuple[int, int] | None = None
        self._weights: dict[str, Any] = {}  # dtype sent -> the object of this version's push
        self._ahead: _Submitted | None = None

    def version_of(self, model: nn.Module) -> int:
        """The weight version of ``model``'s current weights: the last push's, or the next one when the
        weights moved since."""
        return self.version if weights_signature(model) == self._signature else self.version + 1

    def push(self, model: nn.Module, engine_options: dict[str, Any] | None) -> str:
        """Put ``model``'s trainable tensors in the object store under a new version if they moved, and
        return the dtype they were sent in. A reduced-precision engine of a model without adapters keeps
        only the weights cast to its dtype, so they are sent cast (half of fp32's bytes for bf16; the
        same engine copy, so the same samples); adapters are merged in fp32 first, so they go as they are."""
        signature = weights_signature(model)
        if signature != self._signature:
            self._weights, self._signature = {}, signature
            self.version += 1
        dtype = (engine_options or {}).get("dtype", "float32")
        sent_as = "as_is" if is_peft(model) or dtype not in REDUCED_DTYPES else dtype
        if sent_as not in self._weights:
            cast = REDUCED_DTYPES.get(sent_as)
            trainable = {name: (p.detach().to(cast) if cast else p.detach()).cpu()
                         for name, p in model.named_parameters() if p.requires_grad}
            self._weights[sent_as] = ray.put(trainable)
        return sent_as

    def generate(self, model: nn.Module, tokenizer: Any, prompts: list[Any], n: int, sampling: SamplingParams,
                 *, backend: str = "torch", max_prompt_tokens: int | None = None,
                 engine_options: dict[str, Any] | None = None) -> Rollouts:
        """``posttrain.rollout.generate(...)``, the prompts shared out over the workers (see the module
        docstring); ``Rollouts.weight_version`` is the version pushed for ``model``'s weights, or the
        older one of rollouts sampled ahead for this very call."""
        start = time.perf_counter()
        prompt_ids = checked_prompt_ids(model, tokenizer, prompts, n, sampling, max_prompt_tokens)
        call = (prompt_ids, n, sampling, backend, engine_options)
        if self._ahead is not None and self._ahead.call == call:
            submitted, self._ahead = self._ahead, None
        else:
            submitted = self._submit(model, call)
        parts = [self._result(ref, index, first, stop)
                 for index, (ref, (first, stop)) in enumerate(zip(submitted.pending, submitted.shares))]
        for part, (first, _) in zip(parts, submitted.shares):
            counted_from(part, first)
        return joined(parts, start)

    def sample_ahead(self, model: nn.Module, tokenizer: Any, prompts: list[Any], n: int,
                     sampling: SamplingParams, *, backend: str = "torch",
                     max_prompt_tokens: int | None = None,
                     engine_options: dict[str, Any] | None = None) -> None:
        """Submit ``generate``'s shares for these arguments now, with ``model``'s current weights, and
        return; the next ``generate`` call with the same arguments takes them."""
        prompt_ids = checked_prompt_ids(model, tokenizer, prompts, n, sampling, max_prompt_tokens)
        self._ahead = self._submit(model, (prompt_ids, n, sampling, backend, engine_options))

    def _submit(self, model: nn.Module, call: tuple[Any, ...]) -> _Submitted:
        prompt_ids, n, sampling, backend, engine_options = call
        sampling = with_seed(sampling)
        sent_as = self.push(model, engine_options)
        shares = share_bounds(len(prompt_ids), len(self.workers))
        pending = [worker.generate.remote(self.version, [self._weights[sent_as]], sent_as,
                                          prompt_ids[first:stop], n, sampling, backend,
                                          share_options(engine_options, backend, prompt_ids, first, stop))
                   for worker, (first, stop) in zip(self.workers, shares)]
        return _Submitted(call, self.version, pending, shares)

    def _result(self, ref: Any, worker: int, first: int, stop: int) -> Rollouts:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as error:
            cause = error.cause
            raise (cause if isinstance(cause, Exception) else error) from None
        except ray.exceptions.RayActorError as error:
            raise ClusterError(
                f"rollout worker {worker} died {RESTARTS + 1} times while sampling prompts {first}-{stop - 1}"
                " "
                f"(restarted {RESTARTS} times, the share sent again each time); the last death: {error}. "
                "A worker whose policy and engine exhaust its memory does this: lower engine_options.slots "
                "or kv_budget_mb, or give it a larger node") from None
