"""``shipyard promotion``: MLflow webhooks (or polling) drive optimize + validate on a new version, and a canary
rollout on the local target when the promotion alias (``@champion``) moves. See ``service.py``."""
