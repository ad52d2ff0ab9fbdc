"""The MLflow schema of a study: its names, its one writer and its readers.

Layout: one MLflow experiment per study; in it, one parent run per cell (``Stage.CELL``) and,
under each, one child run per Ray Tune trial (``Stage.TRIAL``) or replicate
(``Stage.REPLICATE``), holding the trial's hyperparameters (params), every numeric field it
reports per epoch (metrics, step = epoch) and its string fields (``RESULT_TAGS``) as tags.
Pretraining runs and registered external checkpoints (``Stage.PRETRAIN``) live in the
experiment ``PRETRAIN_EXPERIMENT``; fine-tuning runs link to them with
``Tag.PRETRAIN_RUN_ID``. Every run carries ``Tag.SCHEMA_VERSION``.

- ``ablate.tracking.schema``: every tag, stage, outcome and metric name (no heavy imports).
- ``ablate.tracking.writer``: the one writer: cell runs, the trial logger (a Ray Tune callback
  on the driver, so concurrent trials never contend for the store), pretraining and external
  checkpoint registration.
- ``ablate.tracking.reader``: the readers: latest sweep, a sweep's runs as a DataFrame,
  finished pretrainings.
"""
