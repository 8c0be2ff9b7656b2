"""Evaluation: pure metrics (``metrics``), held-out evaluation inside training loops (``evaluate``),
HumanEval and code-test benchmarks judged in the sandbox (``humaneval``), and the ``posttrain eval``
(``command``) and ``posttrain contamination`` (``contamination``) commands."""
