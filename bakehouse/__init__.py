"""bakehouse: stim -> rollout training data, Bread-compatible."""
