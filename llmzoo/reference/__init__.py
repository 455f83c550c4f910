"""Independent reference implementations used by parity checks (torch only; no llmzoo imports)."""
