"""Labelled datasets in: ``training`` fits a net (``architectures``, ``recipes``, ``learning``) as a Dask task.
Model versions out: calibrated, diagnosed (``calibration``, ``diagnostics``) and registered; ``sweep`` tunes."""
