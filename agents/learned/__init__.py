"""The learned TapFinger scheduler: graph-attention actor-critic trained with multi-agent PPO."""
