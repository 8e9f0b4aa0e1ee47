"""What a person works with: the whole pipeline in one process, notebook helpers, plots, reports, the demo."""
