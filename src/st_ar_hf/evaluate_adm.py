"""The generation metrics of `st_ar_hf.evaluation` as an `evaluate` metric module, loaded from this file:

    import evaluate
    from st_ar_hf.evaluation import EVALUATE_MODULE
    metric = evaluate.load(EVALUATE_MODULE)
    metric.compute(predictions=sample_images, references=reference_images)   # uint8 [H, W, 3] arrays or PIL images
    metric.compute(predictions=sample_images, references="VIRTUAL_imagenet256_labeled.npz")   # an ADM reference batch

The reference set may hold any number of images, as in `st-ar evaluate`. `evaluate` stores its inputs as rows of one
table, so only the predictions are an input feature (`add_batch(predictions=...)` streams them); `compute` hands the
whole reference set to `_compute`. `evaluate` copies this file and imports it on its own, so it imports st_ar_hf
absolutely.
"""

import os

import datasets
import evaluate
import numpy as np

from st_ar_hf.evaluation import evaluate_generation, load_adm_statistics, load_image_batch
from st_ar_hf.sample_accuracy import check_labels_are_classes, load_sample_classifier, sample_accuracy

_DESCRIPTION = """FID, sFID, Inception Score, precision and recall (k = 3) by the ADM evaluator's protocol, on ADM's
Inception-v3 when its weights are found ($ST_AR_INCEPTION_WEIGHTS or torch's hub cache), else on the offline
EfficientNet-Lite0 (not comparable with published FIDs); the result names the network."""
_KWARGS_DESCRIPTION = """
Args:
    predictions: generated images, uint8 [H, W, 3] (arrays or PIL images).
    references: the reference set, any number of images of the predictions' size (arrays, PIL images or image
        files), or the path of an ADM reference batch (`.npz`, images under arr_0; the Inception statistics it stores
        replace those of its images when the network is ADM's Inception, as in `st-ar evaluate`).
    labels: optional class of each prediction, with
    classifier: a `SampleClassifier` folder (`st-ar evaluate --save-classifier`): adds the sample accuracy.
Returns:
    fid, sfid, inception_score, precision, recall (None with the reason under "unreliable" when there are fewer
    images than feature dimensions), num_samples, num_reference, feature_network; with a classifier also
    sample_accuracy, per_class, classifier_held_out_accuracy.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EvaluateADM(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image()}),
        )

    def compute(self, *, predictions=None, references=None, **kwargs):
        """`evaluate` would drop `references`, which are no input feature: they go to `_compute` as `reference_set`."""
        return super().compute(predictions=predictions, reference_set=references, **kwargs)

    def _compute(self, predictions, reference_set=None, labels=None, classifier=None):
        if reference_set is None:
            raise ValueError("references: expected the reference images or an ADM reference batch (.npz), given to "
                             "compute(references=...)")
        if (labels is None) != (classifier is None):
            raise ValueError("sample accuracy needs both `labels` (one per prediction) and `classifier` (a folder)")
        if classifier is not None:  # checked before the features are computed
            classifier, labels = load_sample_classifier(classifier, "classifier"), np.asarray(labels)
            check_labels_are_classes(labels, classifier.num_classes)
        samples = _uint8_rgb(predictions)
        if isinstance(reference_set, (str, os.PathLike)):
            reference = load_image_batch(reference_set, "references")
            statistics = load_adm_statistics(reference_set, "references")
        else:  # decoded as the predictions are
            feature = datasets.Image()
            reference = _uint8_rgb(feature.decode_example(feature.encode_example(image)) for image in reference_set)
            statistics = None
        results = evaluate_generation(samples, reference, reference_statistics=statistics)
        if classifier is not None:
            results.update(sample_accuracy(classifier, samples, labels))
        return results


def _uint8_rgb(images) -> np.ndarray:
    """PIL images as uint8 [N, H, W, 3]."""
    return np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
