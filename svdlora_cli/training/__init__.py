"""Training: full-parameter SFT (the teacher) and LoRA students from several inits."""
