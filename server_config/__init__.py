"""server_config."""
