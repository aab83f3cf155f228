"""Parameter-efficient fine-tuning: LoRA (the book's appendix E)."""
