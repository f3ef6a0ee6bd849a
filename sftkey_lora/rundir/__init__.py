"""The run directory: its layout (every name), `run.json` and its typed step outcomes, and
writes that a kill cannot leave half done."""
