"""Rollout speed and quality: posttrain's torch engine vs Hugging Face ``model.generate``, and (``--slots``)
the slot engine vs the batch engine on sampling-heavy workloads (see ``slot_workload``).

On the embedded SmolLM2-135M-Instruct, for each shape P x G (prompts x samples per prompt):
completion tokens per second of HF generate and of our engine, in fp32 and bf16, with the same
sampling settings (temperature 1, top_p 1, no top-k, G samples per prompt). Lengths are forced to
``--new-tokens`` (HF: ``min_new_tokens``; ours: ``ignore_eos``) and the natural-stop case (EOS) is
reported too. Also printed: ours/HF in the same dtype and ours/HF fp32, the fraction of this
machine's matmul peak (2 x params FLOPs per token), and the bf16 engine's log-prob error against an
fp32 re-scoring of the same tokens.

    python benchmarks/rollout.py                      # 4x8, 8x8, 16x8 at 128 tokens (many minutes)
    python benchmarks/rollout.py --quick              # 8x8 at 32 tokens
    python benchmarks/rollout.py --shapes 8x8 --new-tokens 128 --natural-shapes 8x8
    python benchmarks/rollout.py --threads 1 --clock cpu  # on a shared, loaded machine
    python benchmarks/rollout.py --shapes 8x8 --natural-shapes "" --profile   # + where the time goes
    # slot engine vs batch engine, many more sequences than rows at once, natural stops (ABBA runs):
    python benchmarks/rollout.py --slots humaneval,chat --batch 64 --dtypes float32 --threads 1 --clock cpu
    python benchmarks/rollout.py --slots chat:8 --batch 16 --dtypes float32 --threads 1 --clock cpu

``--clock cpu`` divides by the process's CPU time instead of wall time: with other jobs on the
cores, multi-threaded kernels stall at every barrier and wall-clock rates stop meaning anything;
single-threaded CPU time measures the work itself. Peaks scale with the thread count.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from typing import Any

# Idle OpenMP threads sleep instead of spinning: on a machine shared with other jobs, spinning
# barriers stalled every small op (measured 25-60x slower generate); it applies to HF and to us.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from posttrain.models import EMBEDDED_DEFAULT, load_model, load_tokenizer
from posttrain.rollout import SamplingParams, encode_prompts, generate, sync_weights

PEAK_FLOPS = {"float32": 142e9, "bfloat16": 383e9}  # matmul peaks measured on this machine (2 threads)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter
QUESTIONS = [
    "What is 17 + 25?",
    "Name three primary colours and explain why they are called primary.",
    "Write one sentence about the sea.",
    "If a train travels 60 km in 45 minutes, what is its average speed in km/h? Show your steps.",
    "What is the capital of Japan?",
    "Give a short definition of photosynthesis suitable for a ten-year-old.",
    "Compute 12 * 13.",
    "List two differences between a list and a tuple in Python.",
]


def make_prompts(count: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + ("" if i < 8 else f" (#{i})")}]
            for i in range(count)]


def hf_generate(model: torch.nn.Module, tokenizer: Any, prompt_ids: list[list[int]], samples: int,
                new_tokens: int, fixed: bool) -> tuple[int, float]:
    """HF ``generate`` with the same sampling; returns (completion tokens, seconds)."""
    width = max(len(p) for p in prompt_ids)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    start = clock()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                             top_k=0, num_return_sequences=samples, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens if fixed else 0, pad_token_id=pad)
    seconds = clock() - start
    completions = out[:, width:]
    eos = torch.tensor(sorted(_eos_ids(model, tokenizer)))
    is_eos = torch.isin(completions, eos)
    # Tokens up to and including the first EOS (HF pads finished rows with the pad = EOS token).
    full = torch.full((completions.shape[0],), completions.shape[1], dtype=torch.long)
    lengths = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, full)
    return int(lengths.sum()), seconds


def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    extra = getattr(model.generation_config, "eos_token_id", None)
    ids.update([extra] if isinstance(extra, int) else list(extra or []))
    return ids


def ours(model: torch.nn.Module, tokenizer: Any, prompts: list[Any], samples: int, new_tokens: int,
         dtype: str, fixed: bool) -> tuple[int, float, Any]:
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=new_tokens, seed=0)
    start = clock()
    rollouts = generate(model, tokenizer, prompts, samples, sampling,
                        engine_options={"dtype": dtype, "ignore_eos": fixed})
    return int(rollouts.timing["completion_tokens"]), clock() - start, rollouts


def rescore_error(model: torch.nn.Module, rollouts: Any, pad_id: int) -> tuple[float, float]:
    """Max and mean |sampled log-prob - fp32 re-scored log-prob| over completion tokens."""
    batch = rollouts.to_batch(pad_id)
    diffs = []
    with torch.inference_mode():
        for lo in range(0, batch["input_ids"].shape[0], 8):
            ids, attn = batch["input_ids"][lo:lo + 8], batch["attention_mask"][lo:lo + 8]
            logits = model(input_ids=ids, attention_mask=attn).logits.float()
            token_logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None])[..., 0]
            mask = batch["completion_mask"][lo:lo + 8, 1:].bool()
            diffs.append((token_logp - batch["logprobs"][lo:lo + 8, 1:])[mask].abs())
    every = torch.cat(diffs)
    return every.max().item(), every.mean().item()


def time_shares(policy: torch.nn.Module, tokenizer: Any, prompts: list[Any], samples: int, new_tokens: int,
                dtype: str) -> dict[str, float]:
    """Where our engine's CPU time goes (torch profiler, self time): the linear layers' matrix
    multiplies, attention's batched ones, and everything else (norms, rotary, sampling, bookkeeping).
    The profiler's own per-op cost lands in "other", so the linear share is if anything understated."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ours(policy, tokenizer, prompts, samples, new_tokens, dtype, True)
    self_us = {event.key: event.self_cpu_time_total for event in prof.key_averages()}
    total = sum(self_us.values())
    linear = sum(self_us.get(k, 0) for k in ("aten::mm", "aten::addmm"))
    attention = sum(v for k, v in self_us.items() if k == "aten::bmm" or "scaled_dot_product" in k)
    return {"linear": linear / total, "attention": attention / total,
            "other": (total - linear - attention) / total}


def slot_workload(name: str, tokenizer: Any, count: int) -> tuple[list[Any], int, SamplingParams]:
    """(prompts, samples per prompt, sampling) of a many-sequences, natural-stop workload:
    "humaneval": the first ``count`` HumanEval stubs (0: all 164) as ``posttrain eval`` shows them
    (chat style), n=10, temperature 0.8, <= 256 tokens; "chat": ``count`` questions (0: 64) x 8,
    temperature 1, <= 256 tokens."""
    if name == "humaneval":
        from posttrain.eval import humaneval

        rows = humaneval.problems(count)
        prompts = [humaneval.model_prompt(row["prompt"], "chat", tokenizer) for row in rows]
        return prompts, 10, SamplingParams(temperature=0.8, max_new_tokens=256, seed=0,
                                           stop=humaneval.stop_strings("chat"))
    return make_prompts(count or 64), 8, SamplingParams(temperature=1.0, max_new_tokens=256, seed=0)


def slots_ab(policy: torch.nn.Module, tokenizer: Any, name: str, count: int, batch: int, dtype: str,
             repeats: int) -> None:
    """Batch engine (calls of ``batch // n`` prompts, as ``posttrain eval`` makes them) against the slot
    engine (one call, ``batch`` slots), run alternately (ABBA...) so that load on the machine hits both."""
    prompts, samples, sampling = slot_workload(name, tokenizer, count)
    per_call = max(1, batch // samples)
    totals = {"batch": [0, 0.0], "slots": [0, 0.0]}
    for rep in range(repeats):
        for engine in (("batch", "slots") if rep % 2 == 0 else ("slots", "batch")):
            start = clock()
            if engine == "batch":
                calls = [prompts[i:i + per_call] for i in range(0, len(prompts), per_call)]
                options = {"dtype": dtype, "slots": 0}
            else:
                calls, options = [prompts], {"dtype": dtype, "slots": batch}
            tokens = sum(int(generate(policy, tokenizer, call, samples, sampling, engine_options=options)
                             .timing["completion_tokens"]) for call in calls)
            seconds = clock() - start
            totals[engine][0] += tokens
            totals[engine][1] += seconds
            print(f"  {name} {len(prompts)}x{samples} {dtype} {engine:<5} (at most {batch} rows at once): "
                  f"{tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tokens per clock second",
                  flush=True)
    rates = {engine: tokens / seconds for engine, (tokens, seconds) in totals.items()}
    unit = "tok/s" if clock is time.perf_counter else "tok/cpu-s"
    print(f"{name} {len(prompts)}x{samples} {dtype}, {batch} rows at once: batch engine "
          f"{rates['batch']:.1f} {unit}, slot engine {rates['slots']:.1f} {unit}, slots/batch "
          f"{rates['slots'] / rates['batch']:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4x8,8x8,16x8", help="P x G shapes, comma separated")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--natural-shapes", default="8x8", help="shapes also run with natural EOS stops")
    parser.add_argument("--quick", action="store_true", help="8x8 at 32 tokens")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--profile", action="store_true",
                        help="also print where our time goes at the first shape, and the ours/HF ratio "
                             "if everything but the linear layers' matmuls took no time")
    parser.add_argument("--slots", default="",
                        help="A/B of the slot engine against the batch engine on natural-stop workloads "
                             "instead of the HF comparison: comma-separated humaneval[:count], chat[:count]")
    parser.add_argument("--batch", type=int, default=64, help="rows decoded at once in --slots")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each engine in --slots")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.quick:
        args.shapes, args.new_tokens, args.natural_shapes = "8x8", 32, "8x8"
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tokenizer = load_tokenizer(EMBEDDED_DEFAULT)
    policy = load_model(EMBEDDED_DEFAULT).eval()
    params = sum(p.numel() for p in policy.parameters())
    hf_models = {"float32": policy}
    dtypes = args.dtypes.split(",")
    if "bfloat16" in dtypes:
        hf_models["bfloat16"] = copy.deepcopy(policy).to(torch.bfloat16)
    print(f"model {EMBEDDED_DEFAULT}: {params / 1e6:.1f}M params, {torch.get_num_threads()} threads, "
          f"{args.clock} clock, {args.new_tokens} new tokens, temperature 1.0, top_p 1.0")
    if args.slots:
        for workload in args.slots.split(","):
            name, _, count = workload.partition(":")
            for dtype in dtypes:
                slots_ab(policy, tokenizer, name, int(count or 0), args.batch, dtype, args.repeats)
        return
    peaks = {dtype: peak * args.threads / 2 for dtype, peak in PEAK_FLOPS.items()}
    # Warm-up: builds the bf16 copy and touches every kernel once.
    for dtype in dtypes:
        ours(policy, tokenizer, make_prompts(1), 2, 4, dtype, True)
        hf_generate(hf_models[dtype], tokenizer, encode_prompts(tokenizer, make_prompts(1)), 2, 4, True)
    rows = []
    natural = set(args.natural_shapes.split(",")) if args.natural_shapes else set()
    last_bf16 = None
    for shape in args.shapes.split(","):
        n_prompts, samples = (int(x) for x in shape.split("x"))
        prompts = make_prompts(n_prompts)
        prompt_ids = encode_prompts(tokenizer, prompts)
        for fixed in [True] + ([False] if shape in natural else []):
            hf_tps, our_tps = {}, {}
            for dtype in dtypes:
                new = args.new_tokens
                tokens, seconds = hf_generate(hf_models[dtype], tokenizer, prompt_ids, samples, new, fixed)
                hf_tps[dtype] = tokens / seconds
                tokens, seconds, rollouts = ours(policy, tokenizer, prompts, samples, new, dtype, fixed)
                our_tps[dtype] = tokens / seconds
                if dtype == "bfloat16" and (not fixed or last_bf16 is None):
                    last_bf16 = rollouts  # the natural-stop rollouts when there are some
            for dtype in dtypes:
                rows.append((shape, "fixed" if fixed else "natural", dtype, hf_tps[dtype], our_tps[dtype],
                             our_tps[dtype] / hf_tps[dtype], our_tps[dtype] / hf_tps["float32"],
                             2 * params * our_tps[dtype] / peaks[dtype]))
                print(_format(rows[-1]), flush=True)
    print()
    unit = "tok/s" if args.clock == "wall" else "tok/cpu-s"
    print(f"shape  length   dtype      HF {unit}  ours {unit}  ours/HF(same)  ours/HF(fp32)  ours % of peak")
    for row in rows:
        print(_format(row))
    if args.profile:
        shape = args.shapes.split(",")[0]
        n_prompts, samples = (int(x) for x in shape.split("x"))
        print(f"\nwhere our time goes at {shape} x {args.new_tokens} (fixed length; profiler self time):")
        for dtype in dtypes:
            shares = time_shares(policy, tokenizer, make_prompts(n_prompts), samples, args.new_tokens, dtype)
            measured = next(r[5] for r in rows if r[0] == shape and r[1] == "fixed" and r[2] == dtype)
            print(f"  {dtype:<9} linear matmuls {100 * shares['linear']:.1f}%, attention "
                  f"{100 * shares['attention']:.1f}%, other {100 * shares['other']:.1f}%: ours/HF "
                  f"{measured:.2f}x now, at most {measured / (1 - shares['other']):.2f}x with no other "
                  f"work, {measured / shares['linear']:.2f}x with nothing but the linear matmuls")
    if last_bf16 is not None:
        worst, mean = rescore_error(policy, last_bf16, tokenizer.pad_token_id)
        tokens = int(last_bf16.timing["completion_tokens"])
        print(f"\nbf16 sampled log-probs vs fp32 re-scoring ({len(last_bf16)} rows, {tokens} tokens): "
              f"max |diff| {worst:.4f}, mean {mean:.5f}")
        with torch.no_grad():
            policy.lm_head.weight.mul_(1.0)  # what an optimizer step does to the version counters
        start = clock()
        sync_weights(policy)
        print(f"bf16 weight copy refresh (sync_weights): {clock() - start:.3f} s ({args.clock})")


def _format(row: tuple[Any, ...]) -> str:
    shape, length, dtype, hf, ours_tps, same, fp32, peak = row
    return (f"{shape:>5}  {length:<7}  {dtype:<9} {hf:9.1f} {ours_tps:11.1f} {same:13.2f}x {fp32:13.2f}x "
            f"{100 * peak:13.1f}%")


if __name__ == "__main__":
    main()
