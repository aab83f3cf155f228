"""Using a fine-tuned model: ``Classifier`` (load + predict), int8, batch files, the HTTP service."""
