"""Reading models: references (local, hub cache, built-in), weight files and checkpoint
formats, quantized weights, and the map from tensors to the modules transformers builds."""
