"""ticketx-rl: lottery tickets in stable-baselines3 agents (PPO, A2C, DQN) on gymnasium environments."""

__version__ = "0.1.0"
