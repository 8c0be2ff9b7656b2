"""Peak memory and time of chunked token log-probs against the naive full-logits computation.

Each variant runs in its own process (forward + backward on the embedded model), so the peak
resident memory of one does not hide the other's. Prints one line per variant and the ratios.

    python benchmarks/logprobs.py [--rows 8] [--length 512] [--completion 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _child(mode: str, rows: int, length: int, completion: int) -> None:
    import torch

    from posttrain.logprobs import naive_token_logprobs, token_logprobs
    from posttrain.models import EMBEDDED_DEFAULT, load_model

    torch.manual_seed(0)
    model = load_model(EMBEDDED_DEFAULT)
    ids = torch.randint(0, model.config.vocab_size, (rows, length))
    mask = torch.ones_like(ids)
    scored = torch.zeros_like(ids)
    scored[:, length - completion:] = 1
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if mode == "naive":
        logprobs = naive_token_logprobs(model, ids, mask) * scored
    else:
        logprobs, _ = token_logprobs(model, ids, mask, scored, chunk_size=512)
    logprobs.sum().backward()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "seconds": seconds, "peak_rss_mb": peak / 1024,
                      "peak_above_model_mb": (peak - base) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--completion", type=int, default=256)
    parser.add_argument("--child", choices=["naive", "chunked"])
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.rows, args.length, args.completion)
        return
    results = {}
    for mode in ("naive", "chunked"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--rows", str(args.rows), "--length",
                              str(args.length), "--completion", str(args.completion)],
                             capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[mode]
        print(f"{mode:8s} forward+backward {r['seconds']:6.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB "
              f"({r['peak_above_model_mb']:6.0f} MB above the loaded model)")
    naive, chunked = results["naive"], results["chunked"]
    print(f"rows={args.rows} length={args.length} scored={args.completion}: chunked/naive memory above model "
          f"{chunked['peak_above_model_mb'] / naive['peak_above_model_mb']:.2f}x, "
          f"time {chunked['seconds'] / naive['seconds']:.2f}x")


if __name__ == "__main__":
    main()
