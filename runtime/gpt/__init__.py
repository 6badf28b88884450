"""The GPT (T2S) stage: KV-cache sessions per backend design, host sampling, the decode loop."""
