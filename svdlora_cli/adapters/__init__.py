"""LoRA factors and PEFT adapters: writing, reading, checking and verifying them."""
