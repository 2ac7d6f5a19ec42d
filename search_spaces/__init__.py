"""Built-in search spaces, as YAML files beside this module (see nas.arch.space.load_space)."""
