"""Charter: constitutional classifiers, red teaming and misuse monitoring for LLM deployments."""

__version__ = "0.1.0"
