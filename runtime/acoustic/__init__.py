"""The acoustic stage: semantic tokens + phones + the voice's reference → waveform."""
