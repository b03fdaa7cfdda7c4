"""The search: an Optuna study of compressed candidates, its baselines and its report."""
