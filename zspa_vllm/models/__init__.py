"""One module per architecture family: its processor and model overrides."""
