"""PrefixRL: RL on hard problems by conditioning on off-policy prefixes (Setlur et al., 2026).

This package is the method: records, problem loading, the rejection-sampling sourcer, the prefix builder, rewards,
advantage estimators, losses, evaluation, FLOP accounting and the driver loop. It imports torch and light libraries
only; Megatron-Core lives behind `megatron_ext` and vLLM behind `prefixrl.engine.vllm`, both imported only when used.
"""

__version__ = "0.1.0"
