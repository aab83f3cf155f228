"""The run directory: save (atomically), load, export, report and plots."""
