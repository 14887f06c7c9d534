"""INT8 quantization of exported graphs (recipes, calibration and tuning, drift diagnosis); imports the layers below."""
