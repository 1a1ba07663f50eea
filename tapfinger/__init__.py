"""TapFinger: multi-agent reinforcement-learning scheduling of ML training tasks on edge clusters."""

__version__ = "0.1.0"
