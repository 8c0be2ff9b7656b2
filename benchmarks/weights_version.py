"""What following the weights costs: the check every ``generate`` call runs, and the step hook.

On the embedded SmolLM2-135M-Instruct (272 parameter tensors; the cost depends on their number, not
their size), single-threaded CPU time per call, A/B interleaved in one run:

- ``check``: what a bf16 engine does per ``generate`` call when the weights did not change
  (``TorchEngine.sampling_model``: the weights signature, one walk over the parameters);
- ``generate``: one bf16 ``generate`` call (8 prompts x 8 samples x ``--new-tokens``), for scale;
- ``hook``: the global optimizer step post-hook (``weights._advance_versions``);
- ``step``: one fused AdamW step of the same model, for scale.

    python benchmarks/weights_version.py [--new-tokens 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from posttrain.models import EMBEDDED_DEFAULT, load_model, load_tokenizer
from posttrain.rollout import SamplingParams, TorchEngine, generate
from posttrain.rollout.weights import _advance_versions


def cpu_seconds(work: object, calls: int) -> float:
    """Mean CPU seconds of ``work()`` over ``calls`` calls."""
    start = time.process_time()
    for _ in range(calls):
        work()  # type: ignore[operator]
    return (time.process_time() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = load_tokenizer(EMBEDDED_DEFAULT)
    model = load_model(EMBEDDED_DEFAULT)
    print(f"{sum(1 for _ in model.parameters())} parameter tensors, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters")
    engine = TorchEngine("bfloat16")
    engine.sampling_model(model)  # builds the copy
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    prompts = [f"Question {i}: what is {i} + {i}?" for i in range(8)]
    sampling = SamplingParams(max_new_tokens=args.new_tokens, seed=0)

    def sample() -> None:
        generate(model, tokenizer, prompts, 8, sampling, engine_options={"dtype": "bfloat16",
                                                                          "ignore_eos": True})

    sample()  # warm-up (and the refresh after the optimizer's lazy state)
    times: dict[str, list[float]] = {"check": [], "generate": [], "hook": [], "step": []}
    for _ in range(args.repeats):
        times["check"].append(cpu_seconds(lambda: engine.sampling_model(model), 200))
        times["generate"].append(cpu_seconds(sample, 1))
        times["hook"].append(cpu_seconds(lambda: _advance_versions(optimizer, (), {}), 200))
        times["step"].append(cpu_seconds(optimizer.step, 1))
        engine.sampling_model(model)  # the step moved the weights: refresh outside the timed check
    best = {name: min(values) for name, values in times.items()}
    for name, seconds in best.items():
        print(f"{name:<9} {seconds * 1e3:9.3f} ms  (best of {args.repeats}, CPU time, 1 thread)")
    print(f"check / generate = {best['check'] / best['generate']:.2e}; "
          f"hook / step = {best['hook'] / best['step']:.2e}")


if __name__ == "__main__":
    main()
