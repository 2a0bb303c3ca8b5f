"""L1: the configs: frozen pydantic models, YAML loading and `--set key=value` overrides."""
