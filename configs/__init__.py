"""The zoo's YAML configs, installed as the package data `llmzoo.configs`."""
