"""A Predictor scored on labelled files, through the one evaluation path (`metrics.scoring`).

Pixel scores compare the predicted classes at each image's own size with its truth mask; with
`instances`, cells are also segmented (seeded watershed of the boundary class's probability) and
scored as the ISBI 2012 challenge did: adapted Rand error and variation of information against
the 4-connected components of the truth's other classes.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from seglab.data.classmap import ClassMap, class_masks
from seglab.data.discover import Pair
from seglab.data.io import read_image
from seglab.data.truth import read_truth
from seglab.inference.prediction import Prediction
from seglab.inference.predictor import Predictor
from seglab.metrics.scoring import Evaluation, evaluate_images
from seglab.progress import progress_bar

INSTANCE_KEYS = ("rand_error", "vi_split", "vi_merge", "vi")


def evaluate_predictor(predictor: Predictor, pairs: Sequence[Pair], instances: bool = False,
                       keep: Callable[[Pair, np.ndarray, Prediction, np.ndarray], None] | None = None,
                       progress: bool | None = False) -> Evaluation:
    """Per-image and pooled scores of `predictor` on `pairs`, masks read through its class map.

    `keep(pair, image, prediction, truth)`, if given, sees every image's prediction (the report
    keeps the ones it draws); predictions are not kept otherwise. `progress`: a bar over the
    images (None: on a terminal only; `seglab.progress`).
    """
    class_map = predictor.class_map
    pairs = list(pairs)
    bar = progress_bar(len(pairs), "evaluate", "image", progress)

    def predict(pair: Pair):
        image = read_image(pair.image)
        truth = read_truth(pair.mask, class_map, image.shape[:2], pair.image)
        prediction = predictor.predict(image, instances=instances, name=str(pair.image))
        extra = _instance_scores(prediction, truth, predictor.membrane_class, class_map) if instances else {}
        if keep is not None:
            keep(pair, image, prediction, truth)
        bar.update(1)
        return prediction.classes, truth, extra

    try:
        return evaluate_images(predict, pairs, class_map.names, names=lambda pair: str(pair.image),
                               multilabel=class_map.multilabel)
    finally:
        bar.close()


def _instance_scores(prediction: Prediction, truth: np.ndarray, membrane_class: int, class_map: ClassMap) -> dict:
    from seglab.metrics.instances import instance_scores  # scipy, skimage: only for --instances

    # every pixel not of the boundary class (label) is cell interior
    cells = (truth >= 0) & ~class_masks(truth, class_map)[membrane_class]
    scores = instance_scores(cells.astype(np.int64), prediction.instances, cell_class=1)
    return {key: float(scores[key]) for key in INSTANCE_KEYS}
