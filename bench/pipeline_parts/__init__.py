"""The pipeline benchmark's parts (bench/pipeline.py runs them): the run plans, the three parts
(per-stream ticks, real time, the webhook under load), the synthetic unmixed load, the micro
baselines and the webhook client process."""
