"""Built-in search spaces, as YAML files beside this module (see nas.space.load_space)."""
