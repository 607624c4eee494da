"""The lookahead adapter trained for the embedded default model (SmolLM2-135M-Instruct); see README.md."""
