"""Brain MRI tumour segmentation (LGG, kaggle_3m) with the seed project's U-Net.

Modules, one concern each: ``config`` (every knob), ``source`` (where the data comes from), ``synthetic``
(synthetic tiles in the kaggle_3m layout), ``data`` (slice table, split, Dataset), ``transforms``
(albumentations pipelines), ``model`` (U-Net), ``losses``, ``metrics``, ``checkpoint``, ``inference``,
``train``, ``distributed`` (DDP), ``bench``, ``scans`` (new scans without masks), ``predict`` (masks and
summaries for them), ``views`` (overlays, volume grids, GIFs), ``export`` (TorchScript, ONNX), ``plots``,
``diagram`` (unet.png) and ``cli`` (``python -m helpers``).
"""
__version__ = "0.1.0"
