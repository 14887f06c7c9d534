"""qtool: length-adaptive transformer -> small, fast INT8 ONNX graphs. A thin layer over the stage modules.

Expected failures (bad input: files, models, configurations, numbers) end in one `Error:` line and exit
code 1. Anything else is a bug and shows its traceback.
"""
