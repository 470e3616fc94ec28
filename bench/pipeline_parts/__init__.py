"""The pipeline benchmark's parts (bench/pipeline.py runs them): the synthetic unmixed load, the
micro baselines and the webhook client process."""
