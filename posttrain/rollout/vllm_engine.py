"""The vLLM rollout backend (GPU only; ``pip install posttrain[vllm]``, vLLM >= 0.10.2).

Unchecked in this project's CI (no GPU): it follows vLLM's documented offline API.
1. The policy is written once as an HF folder (``posttrain.models.save_pretrained``) and a
   ``vllm.LLM`` is built from it, sharing the GPU with training (``gpu_memory_utilization``).
2. ``generate`` maps ``SamplingParams`` onto vLLM's and returns the same ``Rollouts`` as the torch
   engine. vLLM returns one kind of log-prob per engine (``logprobs_mode``); this one asks for
   ``processed_logprobs``, which vLLM documents as "the values after applying all processors,
   including temperature and top_k/top_p": the log-prob under the distribution actually sampled from,
   i.e. the sampler's own, ``Rollouts.sampler_logprobs``. ``Rollouts.logprobs`` carries the same
   values, so it equals the torch engine's (pre-truncation, a re-scoring) only when top_k = 0 and
   top_p = 1. (vLLM's default, ``raw_logprobs``, is before temperature too.)
3. ``sync_weights(model)`` pushes the training weights into the running engine through
   ``LLM.collective_rpc`` and each worker's ``model_runner.model.load_weights`` (HF parameter
   names), then drops the prefix cache, whose KV entries came from the old weights. ``generate``
   also syncs by itself when ``weights.weights_signature`` moved (every optimizer step does).
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch
from torch import nn

from posttrain.errors import ConfigError
from posttrain.rollout.types import Rollouts, SamplingParams
from posttrain.rollout.weights import weights_signature


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as error:
        raise ConfigError(
            "backend 'vllm' needs the vllm package, which runs on NVIDIA GPUs only: "
            "pip install posttrain[vllm] (or use backend 'torch')"
        ) from error
    return vllm


def _load_weights(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Runs inside each vLLM worker (module level so that it pickles)."""
    worker.model_runner.model.load_weights(weights=weights)


def _hf_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters under their HF names; a LoRA policy is merged first (vLLM serves the merged model)."""
    if hasattr(model, "peft_config") and hasattr(model, "merge_and_unload"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    # On the CPU: with vLLM's default multiprocess engine the arguments of collective_rpc are
    # serialised to the engine process.
    return [(name, param.detach().cpu()) for name, param in model.state_dict().items()]


class VLLMEngine:
    """A running ``vllm.LLM`` serving the current weights of one training model."""

    def __init__(self, model: nn.Module, tokenizer: Any, dtype: str = "bfloat16",
                 gpu_memory_utilization: float = 0.3, ignore_eos: bool = False,
                 max_model_len: int | None = None) -> None:
        vllm = _import_vllm()
        from posttrain.models import save_pretrained

        self._vllm = vllm
        self._folder = tempfile.TemporaryDirectory(prefix="posttrain-vllm-")
        save_pretrained(model, tokenizer, f"{self._folder.name}/policy")
        self.llm = vllm.LLM(model=f"{self._folder.name}/policy", dtype=dtype,
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            logprobs_mode="processed_logprobs", enable_prefix_caching=True)
        self.ignore_eos = ignore_eos
        self._version = weights_signature(model)

    def sync_weights(self, model: nn.Module) -> None:
        """Load ``model``'s weights into the engine's workers (call after each optimizer step)."""
        self.llm.collective_rpc(_load_weights, args=(_hf_weights(model),))
        self.llm.reset_prefix_cache()
        self._version = weights_signature(model)

    def generate(self, model: nn.Module, tokenizer: Any, prompt_ids: list[list[int]], n: int,
                 sampling: SamplingParams) -> Rollouts:
        if weights_signature(model) != self._version:
            self.sync_weights(model)
        seed = sampling.seed if sampling.seed is not None else int(torch.randint(2**31, (1,)).item())
        params = self._vllm.SamplingParams(
            n=n, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or -1,
            max_tokens=sampling.max_new_tokens, stop=list(sampling.stop) or None,
            include_stop_str_in_output=True, seed=seed, logprobs=0, ignore_eos=self.ignore_eos,
        )
        start = time.perf_counter()
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
        seconds = time.perf_counter() - start
        rows: dict[str, list[Any]] = {"ids": [], "texts": [], "logprobs": [], "reasons": []}
        for output in outputs:
            for sample in sorted(output.outputs, key=lambda s: s.index):
                ids = list(sample.token_ids)
                rows["ids"].append(ids)
                rows["texts"].append(sample.text)
                rows["logprobs"].append(torch.tensor(
                    [step[token].logprob for step, token in zip(sample.logprobs, ids)], dtype=torch.float32))
                rows["reasons"].append("length" if sample.finish_reason == "length" else "stop")
        n_completion = sum(len(ids) for ids in rows["ids"])
        return Rollouts(
            prompt_ids=[list(prompt_ids[i // n]) for i in range(len(rows["ids"]))],
            completion_ids=rows["ids"], texts=rows["texts"], logprobs=rows["logprobs"],
            sampler_logprobs=[values.clone() for values in rows["logprobs"]],
            finish_reasons=rows["reasons"], prompt_index=[i // n for i in range(len(rows["ids"]))],
            timing={"prompt_tokens": float(sum(len(p) for p in prompt_ids)),
                    "completion_tokens": float(n_completion), "seconds": seconds,
                    "tokens_per_s": n_completion / seconds if seconds > 0 else 0.0},
        )
