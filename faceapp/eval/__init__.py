"""Offline evaluation: how right faceapp is on a labelled dataset (``flask --app wsgi eval``).

Not on the request path: it reuses the service's own functions (decoding, the face detector, the
crops, the model, :mod:`faceapp.scoring`) so that what it measures is what the API answers.

- evaluation.py: reads the dataset, encodes each image once, scores and fits temperatures;
- report.py: the report as a terminal table, JSON and a self-contained HTML page;
- cli.py: the ``flask eval`` command.
"""
