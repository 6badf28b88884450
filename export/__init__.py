"""gsv_export: upstream checkpoints → ONNX / OpenVINO bundles (see issue: export)."""
