"""posttrain: post-training for language models (SFT, GRPO, DPO, reward models, PPO, best-of-N)."""

__version__ = "0.1.0"
