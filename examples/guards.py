"""A guard for the reward-hacking alarm: a reward function given weight 0, so it is measured (on the
held-out prompts as eval/reward/last_number_correct) but never trained on.

    # in a PPO config (configs/ppo-arithmetic.yaml):
    rewards: [reward_model:runs/rm-arithmetic-1digit-both/final, examples/guards.py:last_number_correct]
    reward_weights: [1, 0]
    health: {guard: eval/reward/last_number_correct}

1.0 when the last number in the response equals the gold answer (tags or not), else 0.0: a share in
[0, 1], as the alarm's binomial noise needs.
"""

from __future__ import annotations

import re
from typing import Any

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number_correct(prompts: list[Any], completions: list[Any], answer: list[Any],
                        **_: Any) -> list[float]:
    scores = []
    for completion, gold in zip(completions, answer):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        numbers = NUMBER.findall(text)
        scores.append(1.0 if numbers and float(numbers[-1]) == float(gold) else 0.0)
    return scores
