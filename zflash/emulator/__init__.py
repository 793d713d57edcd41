"""The emulated device: storage, enforcement, link shaping and the servers that expose it."""
