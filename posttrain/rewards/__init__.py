"""Reward functions (TRL signature), answer extraction, and scoring a batch with several of them.

See `posttrain.rewards.base` for the interface; built-ins live in `format` and `math`, answer
parsing in `answers`.
"""

from posttrain.rewards.answers import (
    NONE_REASONS,
    completion_text,
    extract_answer,
    extract_boxed,
    extract_tag,
    last_number,
    normalize_answer,
    numbers_equal,
    parse_number,
)
from posttrain.rewards.base import (
    BUILTIN_REWARDS,
    RewardFn,
    RewardScores,
    TrainerState,
    check_reward,
    format_reward,
    resolve_reward,
    score_completions,
)
from posttrain.rewards.format import answer_tag_format, exact_answer, numeric_answer, think_answer_format
from posttrain.rewards.math import MathVerifier, math_verify_answer

__all__ = [
    "BUILTIN_REWARDS",
    "NONE_REASONS",
    "MathVerifier",
    "RewardFn",
    "RewardScores",
    "TrainerState",
    "answer_tag_format",
    "check_reward",
    "completion_text",
    "exact_answer",
    "extract_answer",
    "extract_boxed",
    "extract_tag",
    "format_reward",
    "last_number",
    "math_verify_answer",
    "normalize_answer",
    "numbers_equal",
    "numeric_answer",
    "parse_number",
    "resolve_reward",
    "score_completions",
    "think_answer_format",
]
