"""model_repository."""
