"""``flask batch``: many photos at once, each the service's own way (docs/BATCH.md).

sources.py walks folders, lists and CSVs lazily; pipeline.py turns one input into one line;
output.py writes JSONL or CSV and resumes; progress.py reports; client.py drives a deployment
over HTTP instead (``--server``); run.py overlaps the per-input work with the encoder's batches.
"""
