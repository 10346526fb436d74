"""The artifact cache: content keys, the diskcache/sqlite index and safetensors payloads."""
